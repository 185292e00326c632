//! `EVENT_BATCH` and `PRODUCER_BATCH`: wire events converted to engine events at this
//! boundary, applied here or routed by the cluster, outcomes counted.

use super::*;

pub(in crate::node) fn event_of(e: &msg::WireEvent) -> Result<Event, u8> {
    let zone = ZoneId::new(e.zone).map_err(|_| outcome::INVALID_ZONE)?;
    let kind = match e.kind {
        event_kind::DRIVER_AVAILABLE => EventKind::DriverAvailable { driver: e.driver },
        event_kind::DRIVER_BUSY => EventKind::DriverBusy { driver: e.driver },
        event_kind::DRIVER_OFFLINE => EventKind::DriverOffline { driver: e.driver },
        event_kind::RIDER_DEMAND => EventKind::RiderDemand { rider: e.driver },
        event_kind::TRIP_REQUESTED => EventKind::TripRequested { rider: e.driver },
        event_kind::TRIP_ACCEPTED => EventKind::TripAccepted,
        _ => return Err(outcome::UNKNOWN_KIND),
    };
    Ok(Event {
        id: e.id,
        zone,
        kind,
    })
}

pub(in crate::node) fn outcome_of(o: EventOutcome) -> u8 {
    match o {
        EventOutcome::Applied => outcome::APPLIED,
        EventOutcome::Duplicate => outcome::DUPLICATE,
        EventOutcome::Rejected(r) => match r {
            RejectReason::WrongResolution => outcome::INVALID_ZONE,
            RejectReason::ZoneLimit => outcome::ZONE_LIMIT,
            RejectReason::DriversFull => outcome::DRIVERS_FULL,
            RejectReason::DedupeFull => outcome::DEDUPE_FULL,
            RejectReason::ProducerFenced => outcome::PRODUCER_FENCED,
            RejectReason::SequenceTooOld => outcome::SEQUENCE_TOO_OLD,
            RejectReason::ProducersFull => outcome::PRODUCERS_FULL,
            RejectReason::ShareFull => outcome::SHARE_FULL,
            RejectReason::Overloaded => outcome::OVERLOADED,
            RejectReason::Stopped => outcome::STOPPED,
        },
    }
}

/// Whose events a batch holds.
#[derive(Clone, Copy, Debug)]
pub(in crate::node) enum Sender {
    /// A client connected to this node.
    Client {
        /// Its credential's index here (its quota of new zones).
        index: usize,
        /// Its credential's id (its share of each zone).
        id: engine::CredentialId,
    },
    /// A peer forwarding a batch a client sent it (already charged there for new zones).
    Peer {
        /// The client's credential id, as the peer said (`None` from a peer that does not
        /// say, PROTOCOL.md section 12).
        credential: Option<engine::CredentialId>,
    },
}

/// `PRODUCER_BATCH`: events numbered by their producer (see `engine::producer`).
pub(in crate::node) async fn produced(
    shared: &Shared,
    b: msg::ProducerBatch,
    from: Sender,
) -> Answer<msg::EventBatchReply> {
    if b.producer == 0 {
        return Err(Refusal::new(
            ErrorCode::InvalidValue,
            "producer 0 is not a producer (send EVENT_BATCH for events without one); nothing was applied",
        ));
    }
    let producer = Producer {
        id: b.producer,
        epoch: b.epoch,
    };
    events(shared, Some(producer), b.events, from).await
}

/// Events, from a producer or without one. A client's new zones are charged to its
/// credential's quota (a forwarded batch was charged where it entered the cluster); the
/// credential, either way, is held to its share of each zone by the engine.
pub(in crate::node) async fn events(
    shared: &Shared,
    producer: Option<Producer>,
    events: Vec<msg::WireEvent>,
    from: Sender,
) -> Answer<msg::EventBatchReply> {
    let b = msg::EventBatch { events };
    let (forwarded, credential) = match from {
        Sender::Client { id, .. } => (false, Some(id)),
        Sender::Peer { credential } => (true, credential),
    };
    let origin = engine::Origin {
        credential,
        producer,
    };
    let max =
        (shared.limits.batch_len_max as usize).min(shared.engine.config().actors.batch_events_max);
    if b.events.len() > max {
        return Err(Refusal::new(
            ErrorCode::BatchTooLarge,
            format!(
                "{} events exceed the batch limit of {max}; nothing was applied",
                b.events.len()
            ),
        ));
    }
    let mut outcomes = vec![outcome::APPLIED; b.events.len()];
    let mut valid = Vec::with_capacity(b.events.len());
    for (i, e) in b.events.iter().enumerate() {
        match event_of(e) {
            Ok(ev) if ev.zone.resolution() != shared.engine.config().resolution => {
                outcomes[i] = outcome::INVALID_ZONE;
            }
            Ok(ev) => valid.push((i, ev)),
            Err(code) => outcomes[i] = code,
        }
    }
    if let Sender::Client { index, .. } = from {
        crate::node::quota::charge_new_zones(shared, index, &mut valid, &mut outcomes);
    }
    let apply = async |evs: Vec<Event>| -> Answer<Vec<u8>> {
        let applied = shared.engine.apply_batch_as(origin, evs).await?;
        Ok(applied.into_iter().map(outcome_of).collect())
    };
    if let Some(c) = &shared.cluster {
        c.route_events(producer, &b.events, valid, &mut outcomes, forwarded, apply)
            .await?;
    } else if !valid.is_empty() {
        let (index, evs): (Vec<usize>, Vec<Event>) = valid.into_iter().unzip();
        for (o, i) in apply(evs).await?.into_iter().zip(index) {
            outcomes[i] = o;
        }
    }
    shared.metrics.events.count_outcomes(&outcomes);
    Ok(msg::EventBatchReply { outcomes })
}

//! One request: decoded, authenticated (`HELLO` sets the connection's session), checked
//! against the credential's role, and handed to its operation in `ops`; a refusal becomes
//! an `ERROR` reply. Also the requests peers forward.

use telemetry::ClientRefusal;

use super::*;

pub(super) async fn answer(
    shared: &Shared,
    state: &Connection,
    header: &Header,
    body: &[u8],
    now: u64,
    out: &mut Vec<u8>,
) -> After {
    let id = header.request_id;
    // The order of checks is PROTOCOL.md §6's: kind, body, authentication, role, then the
    // operation's own.
    let message = match protocol::decode_request(header, body) {
        Ok(m) => m,
        Err(e) => {
            error_frame(&shared.metrics, id, e.code(), e.to_string(), out);
            return After::Continue;
        }
    };
    if let Message::Hello(hello) = &message {
        return self::hello(shared, state, hello, id, out);
    }
    let Some(session) = state.session() else {
        error_frame(
            &shared.metrics,
            id,
            ErrorCode::NotAuthenticated,
            "send HELLO with a client token first",
            out,
        );
        return After::Continue;
    };
    let kind = message.kind();
    if kind.is_request() && !session.role.allows(kind) {
        let text = format!("this credential ({:?}) may not send {kind:?}", session.role);
        error_frame(&shared.metrics, id, ErrorCode::Forbidden, text, out);
        return After::Continue;
    }
    // What this request forwards to a peer carries its credential's role (the owner checks
    // it) and id (the owner holds it to its share of a zone).
    let forwarding = crate::cluster::Forwarding {
        role: session.role,
        credential: Some(session.credential_id),
    };
    let from = Sender::Client {
        index: session.credential,
        id: session.credential_id,
    };
    let reply = crate::cluster::FORWARDING
        .scope(forwarding, async move {
            match message {
                Message::Quote(q) => quote(shared, &q, now).map(Message::QuoteOk),
                Message::ZoneState(z) => zone_state(shared, z.zone).await.map(Message::ZoneStateOk),
                Message::FareGet(z) => fare_get(shared, z.zone).await.map(Message::FareGetOk),
                Message::FareSet(f) => fare_set(shared, &f, false).await.map(Message::FareSetOk),
                Message::PolicyGet(_) => {
                    Ok(Message::PolicyGetOk(wire_policy(&shared.engine.policy())))
                }
                Message::PolicySet(p) => policy_set(shared, &p).await.map(Message::PolicySetOk),
                Message::Status(_) => status(shared).await.map(Message::StatusOk),
                Message::Cluster(_) => cluster_status(shared).await.map(Message::ClusterOk),
                Message::ZoneHistory(z) => zone_history(shared, z.zone).map(Message::ZoneHistoryOk),
                Message::Drain(d) => drain(shared, d.node_id, false).await.map(Message::DrainOk),
                Message::QuoteBatch(b) => quote_batch(shared, &b, now).map(Message::QuoteBatchOk),
                Message::EventBatch(b) => events(shared, None, b.events, from)
                    .await
                    .map(Message::EventBatchOk),
                Message::ProducerBatch(b) => produced(shared, b, from)
                    .await
                    .map(Message::ProducerBatchOk),
                Message::Verify(t) => verify(shared, &t, now).map(Message::VerifyOk),
                Message::Explain(t) => explain(shared, &t).await.map(Message::ExplainOk),
                other => Err(Refusal::new(
                    ErrorCode::UnknownKind,
                    format!("{:?} is not a request", other.kind()),
                )),
            }
        })
        .await;
    match reply {
        Ok(m) => protocol::encode(id, &m, out),
        Err(r) => error_frame(&shared.metrics, id, r.code, r.message, out),
    }
    After::Continue
}

pub(super) type Answer<T> = Result<T, Refusal>;

/// Answers a request a peer forwarded (events or a fare change for a zone this node owns),
/// made by `credential` (as the forwarding node said).
pub(super) async fn answer_forwarded(
    shared: &Shared,
    m: Message,
    credential: Option<engine::CredentialId>,
) -> Message {
    let from = Sender::Peer { credential };
    let r = match m {
        Message::EventBatch(b) => events(shared, None, b.events, from)
            .await
            .map(Message::EventBatchOk),
        Message::ProducerBatch(b) => produced(shared, b, from)
            .await
            .map(Message::ProducerBatchOk),
        Message::FareSet(f) => fare_set(shared, &f, true).await.map(Message::FareSetOk),
        Message::Drain(d) => drain(shared, d.node_id, true).await.map(Message::DrainOk),
        other => Err(Refusal::new(
            ErrorCode::UnknownKind,
            format!(
                "peers may forward events and fare changes, not {:?}",
                other.kind()
            ),
        )),
    };
    r.unwrap_or_else(Refusal::into_message)
}

/// `HELLO`: the token's tier and role become the connection's session, answered `WELCOME`;
/// an unknown token, or a shared-tier token on the premium endpoint, closes the connection.
/// From an address backed off after failed `HELLO`s, the token is not even looked at; when
/// `connections_max` connections are authenticated already, the `HELLO` is answered
/// `overloaded` and the connection closed. A `client_name` over `CLIENT_NAME_LEN_MAX` bytes
/// is `invalid_value` (nothing else happens). On a connection authenticated already, the same
/// token is answered `WELCOME` again and any other `forbidden`: a connection's credential
/// never changes (PROTOCOL.md §2).
fn hello(
    shared: &Shared,
    state: &Connection,
    hello: &msg::Hello,
    id: u64,
    out: &mut Vec<u8>,
) -> After {
    let remote = state.remote;
    if let Some(ms) = shared.guard.backed_off(remote.ip()) {
        shared.guard.refused(
            ClientRefusal::BackedOff,
            remote,
            "HELLO from an address backed off after failed HELLOs: closing the connection",
        );
        error_frame(
            &shared.metrics,
            id,
            ErrorCode::BadCredentials,
            format!("too many failed HELLOs from this address; retry in {ms} ms"),
            out,
        );
        return After::CloseConnection(ErrorCode::BadCredentials);
    }
    if hello.client_name.len() > msg::CLIENT_NAME_LEN_MAX {
        let text = format!(
            "client_name is {} bytes, longer than the {} allowed",
            hello.client_name.len(),
            msg::CLIENT_NAME_LEN_MAX
        );
        error_frame(&shared.metrics, id, ErrorCode::InvalidValue, text, out);
        return After::Continue;
    }
    if let Some(session) = state.session() {
        match shared.clients.get(&hello.client_token) {
            Some(c) if c.index == session.credential => {
                protocol::encode(id, &Message::Welcome(welcome(shared, c.tier)), out);
            }
            _ => error_frame(
                &shared.metrics,
                id,
                ErrorCode::Forbidden,
                "this connection is authenticated already with another token; a connection's credential never changes: open a new connection for another",
                out,
            ),
        }
        return After::Continue;
    }
    match shared.clients.get(&hello.client_token) {
        Some(c) if c.tier == Tier::Shared && state.premium_only => {
            shared.guard.refused(
                ClientRefusal::WrongEndpoint,
                remote,
                &format!(
                    "HELLO with a shared-tier token ({}) on the premium endpoint: closing the connection",
                    c.name
                ),
            );
            error_frame(
                &shared.metrics,
                id,
                ErrorCode::Forbidden,
                "this endpoint serves the premium tier only; shared-tier clients connect to the node's main address",
                out,
            );
            After::CloseConnection(ErrorCode::Forbidden)
        }
        Some(c) => {
            let counted = {
                let mut ticket = state.ticket.lock().unwrap_or_else(|p| p.into_inner());
                ticket.as_mut().map_or(Ok(()), Ticket::authenticate)
            };
            if let Err(why) = counted {
                shared.guard.refused(
                    why,
                    remote,
                    "HELLO while connections_max connections are authenticated: closing",
                );
                error_frame(
                    &shared.metrics,
                    id,
                    ErrorCode::Overloaded,
                    "too many connections on this node; retry with backoff",
                    out,
                );
                return After::CloseConnection(ErrorCode::Overloaded);
            }
            state.session.store(Some(Arc::new(Session {
                tier: c.tier,
                role: c.role,
                credential: c.index,
                credential_id: c.id,
            })));
            state.authenticated.notify_one();
            debug!(client = %c.name, tier = ?c.tier, "authenticated");
            protocol::encode(id, &Message::Welcome(welcome(shared, c.tier)), out);
            After::Authenticated
        }
        None => {
            shared.guard.hello_failed(remote);
            error_frame(
                &shared.metrics,
                id,
                ErrorCode::BadCredentials,
                "unknown client token",
                out,
            );
            After::CloseConnection(ErrorCode::BadCredentials)
        }
    }
}

/// What `WELCOME` tells a client of `tier`.
fn welcome(shared: &Shared, tier: Tier) -> msg::Welcome {
    let cfg = shared.engine.config();
    msg::Welcome {
        quote_ttl_ms: cfg.quotes.ttl_ms,
        frame_len_max: shared.limits.frame_len_max,
        batch_len_max: shared.limits.batch_len_max,
        in_flight_max: shared.limits.in_flight_per_connection_max,
        node_id: shared.node_id,
        tier: tier.wire(),
        resolution: cfg.resolution,
    }
}

//! Replication: every tick's new snapshots (and, once a second, the zones still current) to
//! every other member, all prices to a newcomer; replicas and quote counts received; the
//! byte layout of both messages. Whose replica is accepted is `cluster::routing`'s rule.

use super::*;

impl Cluster {
    pub(super) async fn replicate_loop(self: Arc<Self>, mut ticks: TickReceiver) {
        let mut dropped_seen = 0;
        // Members (id, generation) already sent everything this node serves.
        let mut synced: HashSet<(NodeId, u64)> = HashSet::new();
        while let Some(t) = ticks.rx.recv().await {
            let dropped = ticks.dropped.load(Ordering::Relaxed);
            if dropped > dropped_seen {
                warn!(
                    dropped = dropped - dropped_seen,
                    "replication queue full: tick outputs dropped (confirmed again within 1 s)"
                );
                dropped_seen = dropped;
            }
            let vs = self.view.load_full();
            let others: Vec<Peer> = vs
                .peers
                .iter()
                .filter(|p| p.id != self.me)
                .copied()
                .collect();
            // A member new to this node (joined, or restarted: a new generation) has none of
            // our prices, and steady zones publish nothing new: send it all of them once.
            let newcomers: Vec<SocketAddr> = others
                .iter()
                .filter(|p| !synced.contains(&(p.id, p.generation)))
                .map(|p| p.addr)
                .collect();
            synced = others.iter().map(|p| (p.id, p.generation)).collect();
            if !newcomers.is_empty() {
                let zones = self.engine.zone_ids().await.unwrap_or_default();
                let table = self.engine.table();
                let all = TickMsg {
                    now_ms: t.now_ms,
                    published: zones.iter().filter_map(|&z| table.get(z)).collect(),
                    unchanged: Vec::new(),
                };
                let bytes: Arc<[u8]> = encode_replication(self.me, &all).into();
                for addr in newcomers {
                    self.send_uni_within(addr, Arc::clone(&bytes), NEWCOMER_SYNC_ATTEMPTS_MAX);
                }
            }
            let bytes: Arc<[u8]> = encode_replication(self.me, &t).into();
            for p in &others {
                self.send_uni(p.addr, Arc::clone(&bytes));
            }
        }
    }
    /// Once a second, tells each owner how many quotes this node answered from its replicas
    /// of the owner's zones: quotes count as demand, wherever they were answered.
    pub(super) async fn quote_report_loop(self: Arc<Self>) {
        let mut reported: HashMap<ZoneId, u32> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(QUOTE_REPORT_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let vs = self.view.load_full();
            let serving = self.serving.load();
            let now = mono_ms();
            let table = self.engine.table();
            let mut by_owner: BTreeMap<NodeId, Vec<(ZoneId, u32)>> = BTreeMap::new();
            for (zone, slot) in table.zones() {
                let total = table.quote_total(slot);
                // A replica slot starts at 0, so a zone seen for the first time reports all
                // its quotes; while this node serves the zone its own tick counts them, and
                // the mark just follows.
                let last = reported.insert(zone, total).unwrap_or(0);
                let group = vs.view.group_of(zone);
                let Some(owner) = routing::quote_report_to(self.me, &vs.view, &serving, group, now)
                else {
                    continue;
                };
                let delta = total.wrapping_sub(last);
                if delta != 0 {
                    by_owner.entry(owner).or_default().push((zone, delta));
                }
            }
            for (owner, counts) in by_owner {
                let Some(addr) = vs.peers.iter().find(|p| p.id == owner).map(|p| p.addr) else {
                    continue;
                };
                debug!(owner, zones = counts.len(), "reporting remote quote counts");
                let mut b = Vec::with_capacity(7 + counts.len() * 12);
                b.push(2);
                b.extend_from_slice(&self.me.to_le_bytes());
                b.extend_from_slice(&(counts.len() as u32).to_le_bytes());
                for (z, n) in &counts {
                    b.extend_from_slice(&z.raw().to_le_bytes());
                    b.extend_from_slice(&n.to_le_bytes());
                }
                self.send_uni(addr, b.into());
            }
        }
    }

    pub(super) fn on_quote_counts(&self, bytes: &[u8]) {
        let Some(counts) = decode_quote_counts(bytes) else {
            debug!("malformed quote counts dropped");
            return;
        };
        let now = mono_ms();
        let vs = self.view.load();
        let serving = self.serving.load();
        let table = self.engine.table();
        debug!(zones = counts.len(), "remote quote counts received");
        for (zone, n) in counts {
            if routing::accepts_quote_counts(&serving, vs.view.group_of(zone), now) {
                if let Some(slot) = table.slot_of(zone) {
                    table.add_quotes(slot, n);
                }
            }
        }
    }

    pub(super) fn on_replication(&self, bytes: &[u8]) {
        if bytes.first() == Some(&2) {
            return self.on_quote_counts(bytes);
        }
        let Some((from, now_ms, snaps, unchanged)) = decode_replication(bytes) else {
            debug!("malformed replication batch dropped");
            return;
        };
        let vs = self.view.load();
        let serving = self.serving.load();
        let table = self.engine.table();
        let now = mono_ms();
        for s in snaps {
            let g = vs.view.group_of(s.zone);
            self.note_group(&serving, g);
            let priced = table
                .slot_of(s.zone)
                .is_some_and(|i| table.load_price(i).is_some());
            if !routing::accepts_price(&vs.view, &serving, g, from, now, priced) {
                continue;
            }
            if let Ok(slot) = table.insert(s.zone) {
                table.publish(slot, &s);
            }
        }
        for z in unchanged {
            let g = vs.view.group_of(z);
            if !routing::accepts_still_current(&vs.view, &serving, g, from, now) {
                continue;
            }
            if let Some(slot) = table.slot_of(z) {
                table.touch(slot, now_ms);
            }
        }
    }
}

pub(super) fn encode_replication(me: NodeId, t: &TickMsg) -> Vec<u8> {
    let mut b = Vec::with_capacity(19 + t.published.len() * SNAP_BYTES + t.unchanged.len() * 8);
    b.push(1);
    b.extend_from_slice(&me.to_le_bytes());
    b.extend_from_slice(&t.now_ms.to_le_bytes());
    b.extend_from_slice(&(t.published.len() as u32).to_le_bytes());
    b.extend_from_slice(&(t.unchanged.len() as u32).to_le_bytes());
    for s in &t.published {
        let f = &s.fare;
        b.extend_from_slice(&s.zone.raw().to_le_bytes());
        b.extend_from_slice(&s.version.to_le_bytes());
        b.extend_from_slice(&s.multiplier_milli.to_le_bytes());
        b.extend_from_slice(&s.target_milli.to_le_bytes());
        for x in [
            f.version,
            f.base_minor,
            f.per_km_minor,
            f.per_min_minor,
            f.minimum_minor,
            f.surge_cap_milli,
        ] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(&f.currency.bytes());
        b.extend_from_slice(&s.policy_version.to_le_bytes());
        b.extend_from_slice(&s.confidence_permille.to_le_bytes());
        for x in [s.supply, s.demand, s.quotes, s.neighbour_mean_milli] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(&s.computed_at_ms.to_le_bytes());
    }
    for z in &t.unchanged {
        b.extend_from_slice(&z.raw().to_le_bytes());
    }
    b
}

pub(super) fn decode_quote_counts(b: &[u8]) -> Option<Vec<(ZoneId, u32)>> {
    let (&kind, rest) = b.split_first()?;
    if kind != 2 || rest.len() < 6 {
        return None;
    }
    let n = u32::from_le_bytes(rest[2..6].try_into().ok()?) as usize;
    let body = &rest[6..];
    if body.len() != n.checked_mul(12)? {
        return None;
    }
    body.chunks_exact(12)
        .map(|c| {
            let zone = ZoneId::new(u64::from_le_bytes(c[..8].try_into().ok()?)).ok()?;
            Some((zone, u32::from_le_bytes(c[8..].try_into().ok()?)))
        })
        .collect()
}

pub(super) type Decoded = (NodeId, u64, Vec<PriceSnapshot>, Vec<ZoneId>);

pub(super) fn decode_replication(b: &[u8]) -> Option<Decoded> {
    struct R<'a>(&'a [u8]);
    impl R<'_> {
        fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
            let (h, t) = self.0.split_at_checked(N)?;
            self.0 = t;
            h.try_into().ok()
        }
        fn u16(&mut self) -> Option<u16> {
            self.take().map(u16::from_le_bytes)
        }
        fn u32(&mut self) -> Option<u32> {
            self.take().map(u32::from_le_bytes)
        }
        fn u64(&mut self) -> Option<u64> {
            self.take().map(u64::from_le_bytes)
        }
    }
    let mut r = R(b);
    if r.take::<1>()? != [1] {
        return None;
    }
    let from = r.u16()?;
    let now = r.u64()?;
    let np = r.u32()? as usize;
    let nu = r.u32()? as usize;
    if r.0.len() != np * SNAP_BYTES + nu * 8 {
        return None;
    }
    let mut snaps = Vec::with_capacity(np);
    for _ in 0..np {
        let zone = ZoneId::new(r.u64()?).ok()?;
        let version = r.u64()?;
        let multiplier_milli = r.u32()?;
        let target_milli = r.u32()?;
        let fare = FareTable {
            version: r.u32()?,
            base_minor: r.u32()?,
            per_km_minor: r.u32()?,
            per_min_minor: r.u32()?,
            minimum_minor: r.u32()?,
            surge_cap_milli: r.u32()?,
            currency: Currency::from_bytes(r.take::<3>()?).ok()?,
        };
        let fields = SnapshotFields {
            zone,
            version,
            multiplier_milli,
            target_milli,
            fare,
            policy_version: r.u32()?,
            confidence_permille: r.u16()?,
            supply: r.u32()?,
            demand: r.u32()?,
            quotes: r.u32()?,
            neighbour_mean_milli: r.u32()?,
            computed_at_ms: r.u64()?,
        };
        snaps.push(PriceSnapshot::seal(fields));
    }
    let mut unchanged = Vec::with_capacity(nu);
    for _ in 0..nu {
        unchanged.push(ZoneId::new(r.u64()?).ok()?);
    }
    Some((from, now, snaps, unchanged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_batches_round_trip_and_garbage_is_refused() {
        let zone = ZoneId::from_lat_lng(52.52, 13.40, 8).expect("zone");
        let fare = FareTable {
            version: 3,
            base_minor: 250,
            per_km_minor: 120,
            per_min_minor: 30,
            minimum_minor: 500,
            surge_cap_milli: 3_000,
            currency: Currency::from_bytes(*b"EUR").expect("currency"),
        };
        let snap = PriceSnapshot::seal(SnapshotFields {
            zone,
            version: 9,
            multiplier_milli: 1_400,
            target_milli: 1_600,
            fare,
            policy_version: 2,
            confidence_permille: 800,
            supply: 4,
            demand: 11,
            quotes: 20,
            neighbour_mean_milli: 1_200,
            computed_at_ms: 1_700_000_000_000,
        });
        let t = TickMsg {
            now_ms: 42,
            published: vec![snap],
            unchanged: vec![zone],
        };
        let b = encode_replication(7, &t);
        let (from, now, snaps, unchanged) = decode_replication(&b).expect("decodes");
        assert_eq!((from, now), (7, 42));
        assert_eq!(snaps, vec![snap]);
        assert!(snaps[0].is_intact());
        assert_eq!(unchanged, vec![zone]);
        for cut in 0..b.len() {
            assert!(
                decode_replication(&b[..cut]).is_none(),
                "truncated at {cut}"
            );
        }
        let mut bad = b.clone();
        bad[0] = 2;
        assert!(decode_replication(&bad).is_none());
    }
}

//! Replication: every tick's new snapshots (and, once a second, the zones still current) to
//! every other member, all prices to a newcomer; replicas and quote counts received; the
//! messages themselves are `cluster::wire`'s; whose replica is accepted is
//! `cluster::routing`'s rule.

use cluster::wire::{self, PeerMessage};

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
            // our prices, and steady zones publish nothing new: send it every price this node
            // holds once, its replicas included: a group moving between owners at this moment
            // (taken out of one engine, not yet into the next) is then still in someone's
            // announce, so a warm node has a price for every zone (`cluster::warmup`).
            let newcomers: Vec<SocketAddr> = others
                .iter()
                .filter(|p| !synced.contains(&(p.id, p.generation)))
                .map(|p| p.addr)
                .collect();
            synced = others.iter().map(|p| (p.id, p.generation)).collect();
            if !newcomers.is_empty() {
                let table = self.engine.table();
                let all = TickMsg {
                    now_ms: t.now_ms,
                    published: table.zones().filter_map(|(_, i)| table.load(i)).collect(),
                    unchanged: Vec::new(),
                };
                let bytes: Arc<[u8]> = wire::encode_full_replication(
                    self.me,
                    all.now_ms,
                    &all.published,
                    &all.unchanged,
                )
                .into();
                for addr in newcomers {
                    self.send_uni_within(addr, Arc::clone(&bytes), NEWCOMER_SYNC_ATTEMPTS_MAX);
                }
            }
            let bytes: Arc<[u8]> =
                wire::encode_replication(self.me, t.now_ms, &t.published, &t.unchanged).into();
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
                self.send_uni(addr, wire::encode_quote_counts(self.me, &counts).into());
            }
        }
    }

    /// A message a peer (node `peer`, by its certificate) sent on a unidirectional stream
    /// (untrusted bytes: decoded by `cluster::wire`, dropped whole when invalid or when its
    /// claimed sender is not `peer`).
    pub(super) fn on_peer_message(&self, bytes: &[u8], peer: NodeId, remote: SocketAddr) {
        match wire::decode(bytes) {
            Ok(PeerMessage::Replication(r)) if r.from != peer => {
                self.refuse_identity(remote, peer, Some(r.from), "replication");
            }
            Ok(PeerMessage::QuoteCounts(q)) if q.from != peer => {
                self.refuse_identity(remote, peer, Some(q.from), "quote counts");
            }
            Ok(PeerMessage::Replication(r)) => self.on_replication(r),
            Ok(PeerMessage::QuoteCounts(q)) => {
                let counts = self.within_quote_budget(peer, q.counts, mono_ms());
                self.on_quote_counts(counts);
            }
            Err(e) => debug!("peer message dropped: {e}"),
        }
    }

    /// Cuts `counts` down to what `peer` could have answered: at most
    /// `peer_quotes_per_s_max` per second, with a burst of two report intervals. What is
    /// over is dropped (zone by zone, in order) and counted.
    fn within_quote_budget(
        &self,
        peer: NodeId,
        mut counts: Vec<(ZoneId, u32)>,
        now: u64,
    ) -> Vec<(ZoneId, u32)> {
        let rate = self.cfg.peer_quotes_per_s_max;
        let cap = rate.saturating_mul(2 * QUOTE_REPORT_INTERVAL_MS) / 1_000;
        let mut budgets = self.quote_budget.lock().expect("quote budget lock");
        if budgets.len() > self.cfg.peer_connections_max as usize && !budgets.contains_key(&peer) {
            budgets.clear();
        }
        let (left, at) = budgets.entry(peer).or_insert((cap, now));
        let refill = now.saturating_sub(*at).saturating_mul(rate) / 1_000;
        *left = left.saturating_add(refill).min(cap);
        *at = now;
        let mut clamped = false;
        let (mut counts_asked, mut largest) = (0u64, 0u32);
        for (_, n) in &mut counts {
            counts_asked += u64::from(*n);
            largest = largest.max(*n);
            let take = u64::from(*n).min(*left);
            if take < u64::from(*n) {
                clamped = true;
                *n = take as u32;
            }
            *left -= take;
        }
        drop(budgets);
        if clamped {
            self.metrics.cluster.peer_quote_counts_clamped.inc();
            debug!(
                peer,
                asked = counts_asked,
                largest,
                "quote counts beyond what the peer could have answered: cut down"
            );
            counts.retain(|c| c.1 > 0);
        }
        counts
    }

    fn on_quote_counts(&self, counts: Vec<(ZoneId, u32)>) {
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

    fn on_replication(&self, r: wire::Replication) {
        let wire::Replication {
            from,
            now_ms,
            published: snaps,
            still_current: unchanged,
            full,
        } = r;
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
        if full {
            // After its prices are in the table: warming may end once every member's are.
            let _ = self.full_announces.try_send(from);
        }
    }
}

//! The cluster as admins see it (`CLUSTER`), draining a node, and the graceful leave.

use super::*;

impl Cluster {
    /// The cluster as this node sees it (the admin `CLUSTER` request). Walks the quote
    /// table: not for hot paths.
    pub fn describe(&self, zones_owned: u32) -> msg::ClusterReply {
        let vs = self.view.load_full();
        let table = self.engine.table();
        let mut owners: BTreeMap<NodeId, u32> = vs.peers.iter().map(|p| (p.id, 0)).collect();
        let mut hottest: Vec<msg::HotZone> = Vec::new();
        for (zone, slot) in table.zones() {
            let Some(price) = table.load_price(slot) else {
                continue;
            };
            let owner = vs.view.owner(zone).unwrap_or(NodeId::MAX);
            *owners.entry(owner).or_default() += 1;
            hottest.push(msg::HotZone {
                zone: zone.raw(),
                multiplier_milli: price.multiplier_milli,
                owner,
            });
        }
        hottest.sort_unstable_by(|a, b| {
            b.multiplier_milli
                .cmp(&a.multiplier_milli)
                .then(a.zone.cmp(&b.zone))
        });
        hottest.truncate(HOTTEST_ZONES_MAX);
        msg::ClusterReply {
            view_epoch: vs.view.epoch(),
            view_checksum: vs.view.checksum(),
            members: vs
                .peers
                .iter()
                .map(|p| msg::WireMember {
                    generation: p.generation,
                    weight: p.weight,
                    node_id: p.id,
                    client_addr: p.client.to_string().into_bytes(),
                    peer_addr: p.addr.to_string().into_bytes(),
                })
                .collect(),
            owners: owners
                .into_iter()
                .map(|(node_id, zones)| msg::OwnerCount { zones, node_id })
                .collect(),
            hottest,
            zones_owned,
            groups_served: self.serving_groups() as u32,
            node_id: self.me,
            group_resolution: self.cfg.group_resolution,
            redis_up: u8::from(self.store_up.load(Ordering::Relaxed)),
            clustered: 1,
        }
    }

    /// Drains node `node`: this one (hand everything over, then leave; the process then
    /// stops, see [`drained`](Self::drained)) or another (the request is forwarded to it).
    pub async fn drain(&self, node: NodeId, forwarded: bool) -> Result<msg::DrainReply, Refusal> {
        let timeout = Duration::from_millis(self.cfg.lease_ttl_ms * 5);
        if node == self.me {
            let before = self.serving_groups() as u32;
            self.leave(timeout).await;
            let left = self.serving_groups() as u32;
            self.drained.notify_one();
            return Ok(msg::DrainReply {
                groups_handed_over: before.saturating_sub(left),
                groups_left: left,
                node_id: node,
            });
        }
        if forwarded || !self.view.load().peers.iter().any(|p| p.id == node) {
            return Err(Refusal::new(
                ErrorCode::InvalidValue,
                format!("node {node} is not a member of this cluster"),
            ));
        }
        match self
            .request_peer_within(
                node,
                &Message::Drain(msg::DrainRequest { node_id: node }),
                timeout * 2,
            )
            .await
        {
            Some(Message::DrainOk(r)) => Ok(r),
            Some(Message::Error(e)) => Err(Refusal::from_reply(&e)),
            _ => Err(Refusal::new(
                ErrorCode::Unavailable,
                format!("node {node} did not answer the drain"),
            )),
        }
    }

    /// Resolves once this node was drained (the binary then shuts the process down).
    pub async fn drained(&self) {
        self.drained.notified().await;
    }

    /// Graceful leave: tell the others, hand every group over (final fenced writes, leases
    /// released), then stop gossiping. Bounded by `timeout`. Idempotent.
    pub async fn leave(&self, timeout: Duration) {
        if self.leaving.swap(true, Ordering::AcqRel) && self.left.load(Ordering::Acquire) {
            return;
        }
        info!("cluster: leaving");
        self.leaving.store(true, Ordering::Release);
        let _ = self.leave_tx.send(true);
        // The whole leave stays within `timeout`: the hand-off until the time kept for the
        // releases and the final flush, the flush until the end (a slow Redis cannot hold
        // it longer: what is not written by then is what a crash would lose).
        let deadline = Instant::now() + timeout;
        let reserve = Duration::from_millis(LEAVE_RELEASE_WAIT_MS + LEAVE_FLUSH_RESERVE_MS);
        let handoff_until = deadline.checked_sub(reserve).unwrap_or_else(Instant::now);
        while self.serving_groups() > 0 && Instant::now() < handoff_until {
            tokio::time::sleep(Duration::from_millis(LEAVE_POLL_MS)).await;
        }
        // Release what is left (the coordinator's next lease tick sends the releases).
        let release_wait = Duration::from_millis(LEAVE_RELEASE_WAIT_MS)
            .min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(release_wait).await;
        let flush_until = tokio::time::Instant::from_std(deadline);
        if tokio::time::timeout_at(flush_until, self.flush(true))
            .await
            .is_err()
        {
            warn!("leaving: the final snapshot flush did not finish in time");
        }
        if !self.left.swap(true, Ordering::AcqRel) {
            for t in self.tasks.get().into_iter().flatten() {
                t.abort();
            }
        }
        // Close the peer endpoint a little later: a forwarded drain's answer still has to go
        // out on it.
        let endpoint = self.peers.endpoint.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(LEAVE_CLOSE_DELAY_MS)).await;
            endpoint.close(VarInt::from_u32(0), b"leaving");
        });
    }
}

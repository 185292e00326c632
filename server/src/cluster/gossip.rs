//! Membership: the task that owns the [`Membership`] core (foca), feeds it datagrams and
//! ticks, sends its packets, and publishes the ownership view when the live set changes.

use super::*;

impl Cluster {
    pub(super) async fn membership_loop(
        self: Arc<Self>,
        mut m: Membership,
        mut dgrams: mpsc::Receiver<Vec<u8>>,
        mut leave: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(MEMBERSHIP_TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut view = View::new(self.cfg.group_resolution);
        loop {
            tokio::select! {
                d = dgrams.recv() => match d {
                    Some(d) => m.handle_data(&d, mono_ms()),
                    None => return,
                },
                _ = tick.tick() => m.tick(mono_ms()),
                r = leave.changed() => {
                    if r.is_ok() && *leave.borrow() {
                        m.leave(mono_ms());
                        self.send_gossip(m.take_outbox());
                        return;
                    }
                }
            }
            self.send_gossip(m.take_outbox());
            let changes = m.take_changes();
            if changes.is_empty() {
                continue;
            }
            let live = m.live();
            view.set_members(live.iter().map(|p| Member {
                id: p.id,
                weight: p.weight,
            }));
            for c in &changes {
                if let cluster::membership::Change::Down(p) = c {
                    self.metrics.cluster.suspicions.inc();
                    warn!(node = p.id, addr = %p.addr, "member down");
                }
            }
            self.metrics.cluster.members.set_u64(live.len() as u64);
            let before = self.view.load().view.epoch();
            if view.epoch() == before {
                self.view.store(Arc::new(ViewState {
                    view: view.clone(),
                    peers: live,
                }));
                continue;
            }
            self.metrics.cluster.membership_changes.inc();
            let ids: Vec<NodeId> = view.members().map(|x| x.id).collect();
            info!(
                members = ?ids,
                view_epoch = view.epoch(),
                view_checksum = format!("{:016x}", view.checksum()),
                "membership changed"
            );
            self.view.store(Arc::new(ViewState {
                view: view.clone(),
                peers: live,
            }));
        }
    }

    pub(super) fn send_gossip(self: &Arc<Self>, out: Vec<(SocketAddr, Vec<u8>)>) {
        for (addr, data) in out {
            if let Some(c) = self.peers.cached(addr) {
                let _ = c.send_datagram(data.into());
                continue;
            }
            let this = Arc::clone(self);
            tokio::spawn(async move {
                if let Some(c) = this.peers.get(addr).await {
                    let _ = c.send_datagram(data.into());
                }
            });
        }
    }
}

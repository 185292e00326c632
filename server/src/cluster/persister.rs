//! The persister: every `snapshot_interval_ms`, the changed zones of every group with a
//! valid lease, written fenced by epoch, one script call per group, all groups at once;
//! what Redis did not take is retried. Also the fenced group write the hand-off uses.

use super::*;

impl Cluster {
    pub(super) async fn persist_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.snapshot_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            self.flush(false).await;
        }
    }

    /// Writes changed zones (`all`: every zone) of every served group; what fails stays
    /// queued for the next try.
    pub(super) async fn flush(&self, all: bool) {
        let Some(store) = self.store.get().cloned() else {
            return;
        };
        let mut w = self.writer.lock().await;
        let Ok(exports) = self.engine.export_dirty(all).await else {
            return;
        };
        let vs = self.view.load_full();
        let mut pending = std::mem::take(&mut w.unwritten);
        for e in &exports {
            pending
                .entry(vs.view.group_of(e.zone))
                .or_default()
                .insert(e.zone.raw(), cluster::persist::encode(e));
        }
        if pending.is_empty() {
            return;
        }
        let now = mono_ms();
        let epochs: HashMap<u64, u64> = {
            let serving = self.serving.load();
            pending
                .keys()
                .filter_map(|&g| serving.epoch(g, now).map(|e| (g, e)))
                .collect()
        };
        let mut set = tokio::task::JoinSet::new();
        for (g, zones) in pending {
            let Some(&epoch) = epochs.get(&g) else {
                // Not ours any more: the coordinator's hand-off or loss path handles it.
                continue;
            };
            let (store, metrics, me) = (store.clone(), Arc::clone(&self.metrics), self.me);
            set.spawn(async move {
                let zones: Vec<(u64, Vec<u8>)> = zones.into_iter().collect();
                let r = write_chunks(&store, &metrics, me, g, epoch, &zones).await;
                (g, epoch, zones, r)
            });
        }
        while let Some(r) = set.join_next().await {
            let Ok((g, epoch, zones, r)) = r else {
                continue;
            };
            // Redis unreachable: keep them for the next try. (Refused: the lease is gone, the
            // coordinator's loss path takes the group over.)
            if !self.note_write(g, epoch, &r) && matches!(r, Err(WriteFailure::Unreachable(_))) {
                w.unwritten.entry(g).or_default().extend(zones);
            }
        }
    }
}

/// Why a fenced group write did not complete.
#[derive(Debug)]
pub(super) enum WriteFailure {
    /// The store refused it (a stale epoch: fenced off).
    Refused(StoreError),
    /// Redis did not answer; the write may be retried.
    Unreachable(cluster::redis_store::RedisStoreError),
}

/// Writes a group's zones fenced by `epoch`, in chunks of at most `WRITE_ZONES_MAX`, timing
/// each; stops at the first chunk that fails.
pub(super) async fn write_chunks(
    store: &RedisLeaseStore,
    metrics: &telemetry::Metrics,
    me: NodeId,
    g: u64,
    epoch: u64,
    zones: &[(u64, Vec<u8>)],
) -> Result<(), WriteFailure> {
    for chunk in zones.chunks(WRITE_ZONES_MAX) {
        let t0 = Instant::now();
        let r = store.write(g, me, epoch, chunk).await;
        metrics.redis.write_duration.observe(t0.elapsed());
        match r {
            Ok((_, Ok(_))) => {}
            Ok((_, Err(e))) => return Err(WriteFailure::Refused(e)),
            Err(e) => return Err(WriteFailure::Unreachable(e)),
        }
    }
    Ok(())
}

//! The coordinator task: the only owner of the [`Coordinator`] core. It feeds it the view,
//! the groups seen, leaving and Redis's answers, carries out its actions (lease requests,
//! restores, hand-off and loss writes, the stray sweep) and publishes its [`Serving`].

use super::*;

impl Cluster {
    pub(super) async fn coordinator_loop(
        self: Arc<Self>,
        mut coord: Coordinator,
        mut groups_seen: mpsc::Receiver<u64>,
        mut full_announces: mpsc::Receiver<NodeId>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(COORDINATOR_TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut view = self.view.load_full();
        let mut bad = BadValues::default();
        loop {
            tick.tick().await;
            let Some(store) = self.store.get().cloned() else {
                continue;
            };
            // Inputs: groups the request path saw, the view, leaving.
            let mut seen = Vec::new();
            while let Ok(g) = groups_seen.try_recv() {
                seen.push(g);
            }
            coord.handle_groups_seen(seen);
            while let Ok(from) = full_announces.try_recv() {
                coord.handle_full_announce(from);
            }
            let vs = self.view.load_full();
            if !Arc::ptr_eq(&vs, &view) {
                coord.handle_view(vs.view.clone());
                view = vs;
            }
            if self.leaving.load(Ordering::Acquire) {
                coord.handle_leave();
            }
            coord.tick(mono_ms());
            if coord.is_warm() && !self.warm.swap(true, Ordering::AcqRel) {
                info!(
                    groups_served = coord.serving(mono_ms()).served_count(mono_ms()),
                    "warm: every member's prices received and every owned group served \
                     (unknown zones are answered unknown_zone from now on)"
                );
            }
            // Published before anything is carried out: a group handed over or lost stops
            // being served before its zones leave the engine.
            self.publish(&coord);
            loop {
                let actions: Vec<Action> = std::iter::from_fn(|| coord.poll_action()).collect();
                if actions.is_empty() {
                    break;
                }
                self.carry_out(&store, &mut coord, actions, &mut bad).await;
                self.publish(&coord);
            }
        }
    }

    /// Makes the coordinator's decisions visible to the request path and the writers.
    pub(super) fn publish(&self, coord: &Coordinator) {
        let now = mono_ms();
        let serving = coord.serving(now);
        self.metrics
            .cluster
            .groups_owned
            .set_u64(serving.served_count(now) as u64);
        self.serving.store(Arc::new(serving));
    }

    /// Carries out one batch of the coordinator's actions against Redis and the engine, and
    /// hands it the results: the groups listed, hand-offs and losses (one pass of fenced
    /// writes), the stray sweep, the lease requests (all at once), then the restores.
    pub(super) async fn carry_out(
        &self,
        store: &RedisLeaseStore,
        coord: &mut Coordinator,
        actions: Vec<Action>,
        bad: &mut BadValues,
    ) {
        let (mut handoff, mut lost, mut requests, mut restores) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut list, mut sweep) = (false, false);
        for a in actions {
            match a {
                Action::Lease {
                    request,
                    sent_at_ms,
                } => requests.push((request, sent_at_ms)),
                Action::ListGroups => list = true,
                Action::Restore { group, epoch } => restores.push((group, epoch)),
                Action::HandOff { group, epoch } => handoff.push((group, epoch)),
                Action::Abandon {
                    group,
                    last_epoch,
                    keep_zones,
                } => lost.push((group, last_epoch, keep_zones)),
                Action::SweepStray => sweep = true,
                Action::StoreRewritten {
                    reset_seen_at_ms,
                    rewritten_at_ms,
                    groups,
                } => {
                    let ms = rewritten_at_ms.saturating_sub(reset_seen_at_ms);
                    self.metrics
                        .cluster
                        .store_rewrite_duration
                        .observe(Duration::from_millis(ms));
                    info!(
                        groups,
                        after_ms = ms,
                        "redis restarted empty: every group this node owns is rewritten and served again"
                    );
                }
            }
        }
        if list {
            match store.groups().await {
                Ok((gs, wrong)) => {
                    self.note_store(true);
                    for v in &wrong {
                        bad.note(v, mono_ms(), &self.metrics);
                    }
                    coord.handle_groups_seen(gs);
                }
                Err(e) => {
                    self.note_store(false);
                    debug!("redis groups: {e}");
                }
            }
        }
        if !handoff.is_empty() || !lost.is_empty() {
            self.drop_groups(store, coord.view(), &handoff, &lost).await;
            for &(g, _) in &handoff {
                coord.handle_handed_off(mono_ms(), g);
            }
        }
        if sweep {
            // Zones live here whose group is neither served nor ours any more (a lease
            // lost, then the view moved the group): the new owner has them now.
            let all = self.engine.zone_ids().await.unwrap_or_default();
            let stray: Vec<ZoneId> = all
                .into_iter()
                .filter(|z| !coord.keeps(coord.view().group_of(*z)))
                .collect();
            if !stray.is_empty() {
                debug!(
                    zones = stray.len(),
                    "dropping zones of groups owned elsewhere"
                );
                let _ = self.engine.remove(&stray).await;
            }
        }
        if !requests.is_empty() {
            let replies = self.run_lease_requests(store, requests, bad).await;
            let at = mono_ms();
            for r in replies {
                match r {
                    Ok(reply) => {
                        match (reply.request, reply.result) {
                            (Request::Renew { .. }, Ok(_)) => {
                                self.metrics.cluster.lease_renewals_ok.inc();
                            }
                            (Request::Renew { .. }, Err(_)) => {
                                self.metrics.cluster.lease_renewals_failed.inc();
                            }
                            _ => {}
                        }
                        coord.handle_lease_reply(at, reply);
                    }
                    Err(e) => {
                        self.metrics.cluster.lease_renewals_failed.inc();
                        debug!("lease request: {e}");
                    }
                }
            }
        }
        if restores.is_empty() {
            return;
        }
        let mut local: HashMap<u64, Vec<ZoneId>> = HashMap::new();
        match self.engine.zone_ids().await {
            Ok(zones) => {
                for z in zones {
                    local.entry(coord.view().group_of(z)).or_default().push(z);
                }
            }
            Err(e) => {
                // Restoring without knowing what is live here could serve an old copy.
                warn!("restoring: engine: {e}");
                for (g, _) in restores {
                    coord.handle_restored(mono_ms(), g, false);
                }
                return;
            }
        }
        if self.cfg.test_restore_hold_ms > 0 {
            // The fault-injection hook: the leases are granted and published, the store not
            // read yet (once per batch, so the hold stays shorter than a lease).
            tokio::time::sleep(Duration::from_millis(self.cfg.test_restore_hold_ms)).await;
        }
        for (g, epoch) in restores {
            let span = info_span!("takeover", group = format!("{g:x}"), epoch);
            let t0 = Instant::now();
            // The writer lock from the store read until the group is published as served:
            // a periodic flush either ran before (and wrote nothing of this group: no epoch
            // before the restore) or runs after, on the restored zones.
            let w = self.writer.lock().await;
            let local = local.remove(&g).unwrap_or_default();
            let ok = self
                .restore_group(store, g, epoch, &local, bad)
                .instrument(span)
                .await;
            if ok {
                self.metrics.cluster.handoff_duration.observe(t0.elapsed());
            }
            coord.handle_restored(mono_ms(), g, ok);
            self.publish(coord);
            drop(w);
        }
    }

    /// Sends the lease requests, all at once, except those about a stored value found bad
    /// and still backing off (the coordinator re-sends them later). A bad value is reported
    /// as such (metric, a rate-limited log line naming its key), not as Redis being down.
    pub(super) async fn run_lease_requests(
        &self,
        store: &RedisLeaseStore,
        reqs: Vec<(Request, u64)>,
        bad: &mut BadValues,
    ) -> LeaseReplies {
        let now = mono_ms();
        let prefix = store.prefix().to_owned();
        let mut set = tokio::task::JoinSet::new();
        for (r, sent) in reqs {
            let group = match r {
                Request::Acquire { group, .. }
                | Request::Renew { group, .. }
                | Request::Release { group, .. } => group,
            };
            if bad.backing_off(&prefix, group, now) {
                continue;
            }
            let s = store.clone();
            let me = self.me;
            set.spawn(async move {
                let ans = match r {
                    Request::Acquire { group, min_epoch } => s.acquire(group, me, min_epoch).await,
                    Request::Renew { group, epoch } => s.renew(group, me, epoch).await,
                    Request::Release { group, epoch } => s.release(group, me, epoch).await,
                };
                (
                    group,
                    ans.map(|(incarnation, result)| Reply {
                        request: r,
                        sent_at_ms: sent,
                        incarnation,
                        result,
                    }),
                )
            });
        }
        let mut out = Vec::new();
        let mut ok = true;
        let mut answered = false;
        while let Some(r) = set.join_next().await {
            let Ok((group, r)) = r else {
                continue;
            };
            match &r {
                Err(RedisStoreError::Corrupt(v)) => bad.note(v, mono_ms(), &self.metrics),
                Err(_) => ok = false,
                Ok(_) => {
                    answered = true;
                    bad.answered(&prefix, group);
                }
            }
            out.push(r);
        }
        for v in store.take_clamped() {
            bad.note_clamped(&v, &self.metrics);
        }
        if answered || !ok {
            self.note_store(ok);
        }
        out
    }

    /// Restores group `g` under lease `epoch` (see ARCHITECTURE.md, "How a takeover
    /// flows"): the store's copy of each zone replaces the one live here; a zone live here
    /// (`local`) that the store does not hold is written under `epoch` first; every zone's
    /// snapshot version is raised to at least [`version_floor`]`(epoch)` and above the copy
    /// live here. False when something failed: nothing is served, the coordinator retries.
    pub(super) async fn restore_group(
        &self,
        store: &RedisLeaseStore,
        g: u64,
        epoch: u64,
        local: &[ZoneId],
        bad: &mut BadValues,
    ) -> bool {
        let stored = match store.read_group(g).await {
            Ok(s) => {
                // A field that is not a zone id costs that field only: the rest restores.
                for v in &s.bad {
                    bad.note(v, mono_ms(), &self.metrics);
                }
                s.zones
            }
            Err(e) => {
                self.note_store(false);
                warn!("restoring: redis read failed, retrying: {e}");
                return false;
            }
        };
        let live: HashMap<u64, engine::core::ZoneExport> = match self.engine.export(local).await {
            Ok(v) => v.into_iter().map(|e| (e.zone.raw(), e)).collect(),
            Err(e) => {
                warn!("restoring: engine: {e}");
                return false;
            }
        };
        let limits = &self.engine.config().zone;
        let floor = version_floor(epoch);
        let mut cores: Vec<ZoneCore> = Vec::with_capacity(stored.len() + live.len());
        let mut in_store: HashSet<u64> = HashSet::with_capacity(stored.len());
        for (zone, bytes) in &stored {
            in_store.insert(*zone);
            let decoded = cluster::persist::decode_export(bytes).and_then(|mut e| {
                let here = live.get(zone).map_or(0, |l| l.version);
                e.version = e.version.max(here).max(floor);
                Ok(ZoneCore::import(e, limits)?)
            });
            match decoded {
                Ok(core) => cores.push(core),
                Err(e) => {
                    self.metrics.redis.bad_values.inc();
                    warn!(
                        key = format!("{}:snap:{g}", store.prefix()),
                        field = zone,
                        zone = format!("{zone:x}"),
                        "stored snapshot refused (this zone only; the rest of the group restores): {e}"
                    );
                }
            }
        }
        // A zone live here but absent from the store (the store restarted empty, or the zone
        // was never written): no owner since wrote it (every hand-off writes all of a
        // group's zones), so this copy is the newest there is. It is written under the new
        // lease before the group is served, so it is durable at once, not when it next
        // changes.
        let missing: Vec<engine::core::ZoneExport> = live
            .into_values()
            .filter(|e| !in_store.contains(&e.zone.raw()))
            .map(|mut e| {
                e.version = e.version.max(floor);
                e
            })
            .collect();
        let written = missing.len();
        if !missing.is_empty() {
            let zones: Vec<(u64, Vec<u8>)> = missing
                .iter()
                .map(|e| (e.zone.raw(), cluster::persist::encode(e)))
                .collect();
            if !self.write_group(store, g, epoch, zones).await {
                warn!(
                    zones = written,
                    "restoring: writing the zones the store lacks failed, retrying"
                );
                return false;
            }
            for e in missing {
                match ZoneCore::import(e, limits) {
                    Ok(core) => cores.push(core),
                    Err(e) => warn!("restoring: a live zone did not re-import: {e}"),
                }
            }
        }
        let n = cores.len();
        match self.engine.import(cores).await {
            Ok(failed) => {
                if failed > 0 {
                    warn!(failed, "zone limit reached while restoring");
                }
                self.metrics.cluster.handoffs_acquired.inc();
                // The `takeover` span carries the group and its epoch.
                info!(zones = n, written_from_memory = written, "group taken over");
                true
            }
            Err(e) => {
                warn!("restoring: engine: {e}");
                false
            }
        }
    }

    /// Stops serving `handoff` (group, epoch held: final fenced write, zones removed; the
    /// coordinator releases the lease once this returns) and `lost` (group, last epoch,
    /// keep zones: the lease lapsed; a last fenced write the store may refuse; the zones stay
    /// live for quotes, without events, while the group is still this node's in its view).
    /// Neither is served any more: the coordinator published that before.
    pub(super) async fn drop_groups(
        &self,
        store: &RedisLeaseStore,
        view: &View,
        handoff: &[(u64, u64)],
        lost: &[(u64, Option<u64>, bool)],
    ) {
        let mut w = self.writer.lock().await;
        let all = self.engine.zone_ids().await.unwrap_or_default();
        let set: HashSet<u64> = handoff
            .iter()
            .map(|h| h.0)
            .chain(lost.iter().map(|l| l.0))
            .collect();
        let kept: HashSet<u64> = lost.iter().filter(|l| l.2).map(|l| l.0).collect();
        let (remove, keep): (Vec<ZoneId>, Vec<ZoneId>) = all
            .into_iter()
            .filter(|z| set.contains(&view.group_of(*z)))
            .partition(|z| !kept.contains(&view.group_of(*z)));
        let mut exports = self.engine.remove(&remove).await.unwrap_or_default();
        exports.extend(self.engine.export(&keep).await.unwrap_or_default());
        let mut by_group: HashMap<u64, Vec<(u64, Vec<u8>)>> = HashMap::new();
        for e in &exports {
            by_group
                .entry(view.group_of(e.zone))
                .or_default()
                .push((e.zone.raw(), cluster::persist::encode(e)));
        }
        for &(g, epoch) in handoff {
            let span = info_span!("handoff", group = format!("{g:x}"), epoch);
            let zones = by_group.remove(&g).unwrap_or_default();
            let n = zones.len();
            let ok = self.write_group(store, g, epoch, zones).await;
            w.unwritten.remove(&g);
            self.metrics.cluster.handoffs_released.inc();
            span.in_scope(|| info!(zones = n, written = ok, "group handed over"));
        }
        for &(g, last_epoch, _) in lost {
            // The lease lapsed (this node was paused, cut off, or Redis was away). Try to save
            // the state with the old epoch: the store accepts it only if no one else took
            // the group, and refuses (and counts) it otherwise.
            let mut zones = by_group.remove(&g).unwrap_or_default();
            if let Some(mut pending) = w.unwritten.remove(&g) {
                for (z, b) in zones.drain(..) {
                    pending.insert(z, b);
                }
                zones = pending.into_iter().collect();
            }
            let n = zones.len();
            let ok = match last_epoch {
                Some(e) if n > 0 => self.write_group(store, g, e, zones).await,
                _ => false,
            };
            warn!(
                group = format!("{g:x}"),
                zones = n,
                saved = ok,
                "lease lapsed: stopped serving the group"
            );
        }
    }

    /// A fenced write of a group's zones, in chunks. True when every chunk was stored.
    pub(super) async fn write_group(
        &self,
        store: &RedisLeaseStore,
        g: u64,
        epoch: u64,
        zones: Vec<(u64, Vec<u8>)>,
    ) -> bool {
        let r = write_chunks(store, &self.metrics, self.me, g, epoch, &zones).await;
        self.note_write(g, epoch, &r)
    }

    /// Records how a group write ended (Redis state, fencing, logs); true when stored.
    pub(super) fn note_write(&self, g: u64, epoch: u64, r: &Result<(), WriteFailure>) -> bool {
        match r {
            Ok(()) => {
                self.note_store(true);
                true
            }
            Err(WriteFailure::Refused(StoreError::Stale { current })) => {
                self.note_store(true);
                self.note_fenced();
                warn!(
                    group = format!("{g:x}"),
                    epoch, current, "snapshot write fenced off (stale epoch)"
                );
                false
            }
            Err(WriteFailure::Refused(e)) => {
                warn!(group = format!("{g:x}"), "snapshot write refused: {e:?}");
                false
            }
            Err(WriteFailure::Unreachable(RedisStoreError::Corrupt(v))) => {
                // Redis is up; the group's lease holds a bad value. Counted here, logged by
                // the coordinator (rate-limited) when its renewal reads the same key.
                self.metrics.redis.bad_values.inc();
                debug!(group = format!("{g:x}"), "snapshot write refused: {v}");
                false
            }
            Err(WriteFailure::Unreachable(e)) => {
                self.note_store(false);
                debug!("snapshot write failed: {e}");
                false
            }
        }
    }
}

/// First and largest pause before asking Redis again about a stored value found bad.
const BAD_VALUE_RETRY_FIRST_MS: u64 = 500;
const BAD_VALUE_RETRY_MAX_MS: u64 = 30_000;
/// A bad value still bad is logged again at most this often (with the count in between).
const BAD_VALUE_LOG_INTERVAL_MS: u64 = 60_000;
/// Bad keys remembered; beyond it the oldest-logged are forgotten (and logged again).
const BAD_KEYS_MAX: usize = 1_024;

/// Stored values found bad, by key, as the coordinator task knows them (it alone owns this):
/// when each may be asked about again (backing off, doubling) and when it was last logged.
#[derive(Debug, Default)]
pub(super) struct BadValues {
    by_key: HashMap<String, BadKey>,
}

#[derive(Debug)]
struct BadKey {
    retry_at_ms: u64,
    backoff_ms: u64,
    logged_at_ms: u64,
    unlogged: u64,
}

impl BadValues {
    /// Counts `v`, logs it (at most once per `BAD_VALUE_LOG_INTERVAL_MS` per key) and backs
    /// requests that read it off.
    pub(super) fn note(&mut self, v: &StoreValue, now: u64, metrics: &telemetry::Metrics) {
        metrics.redis.bad_values.inc();
        if self.by_key.len() >= BAD_KEYS_MAX && !self.by_key.contains_key(&v.key) {
            self.by_key.clear();
        }
        let e = self.by_key.entry(v.key.clone()).or_insert(BadKey {
            retry_at_ms: 0,
            backoff_ms: BAD_VALUE_RETRY_FIRST_MS / 2,
            logged_at_ms: 0,
            unlogged: 0,
        });
        e.backoff_ms = (e.backoff_ms * 2).min(BAD_VALUE_RETRY_MAX_MS);
        e.retry_at_ms = now + e.backoff_ms;
        if e.logged_at_ms == 0 || now.saturating_sub(e.logged_at_ms) >= BAD_VALUE_LOG_INTERVAL_MS {
            warn!(
                key = %v.key,
                field = %v.field,
                value = ?v.value,
                again = e.unlogged,
                retry_in_ms = e.backoff_ms,
                "redis holds a value this cluster did not write ({v}); Redis is up, but what \
                 reads this key fails until it is repaired (SECURITY.md, \"Redis\")"
            );
            e.logged_at_ms = now.max(1);
            e.unlogged = 0;
        } else {
            e.unlogged += 1;
        }
    }

    /// A quiet period the store clamped (found more than a lease length ahead).
    pub(super) fn note_clamped(&self, v: &StoreValue, metrics: &telemetry::Metrics) {
        metrics.redis.bad_values.inc();
        warn!(
            key = %v.key,
            value = ?v.value,
            "redis quiet period was more than one lease length ahead of Redis's clock: \
             clamped to one lease length (a store found empty sets now + lease_ttl_ms)"
        );
    }

    /// Whether a request about `group` must wait: its lease, the incarnation or the quiet
    /// period was found bad and its pause is not over.
    pub(super) fn backing_off(&self, prefix: &str, group: u64, now: u64) -> bool {
        if self.by_key.is_empty() {
            return false;
        }
        [
            format!("{prefix}:lease:{group}"),
            format!("{prefix}:incarnation"),
            format!("{prefix}:quiet_until"),
        ]
        .iter()
        .any(|k| self.by_key.get(k).is_some_and(|b| now < b.retry_at_ms))
    }

    /// A request about `group` was answered: what it reads is good again.
    pub(super) fn answered(&mut self, prefix: &str, group: u64) {
        if self.by_key.is_empty() {
            return;
        }
        for k in [
            format!("{prefix}:lease:{group}"),
            format!("{prefix}:incarnation"),
            format!("{prefix}:quiet_until"),
        ] {
            if self.by_key.remove(&k).is_some() {
                info!(key = %k, "redis value repaired");
            }
        }
    }
}

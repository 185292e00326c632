//! Durable changes: fare tables written through to Redis (fenced, on the zone's owner, then
//! applied), the surge policy stored by a version compare-and-set and polled by every node.

use super::*;

impl Cluster {
    /// A durable fare change: made on the zone's owner, written through to Redis (fenced),
    /// applied only once Redis confirmed. Forwarded to the owner when that is another node.
    pub async fn fare_set(
        &self,
        zone: ZoneId,
        fare: FareTable,
        forwarded: bool,
    ) -> Result<u32, Refusal> {
        let g = self.group_of(zone);
        let serving = self.serving.load_full();
        self.note_group(&serving, g);
        let route = routing::route(
            self.me,
            &self.view.load().view,
            &serving,
            g,
            mono_ms(),
            forwarded,
        );
        if route != Route::Local {
            return match route {
                Route::Forward(o) => {
                    let m = Message::FareSet(msg::FareSet {
                        zone: zone.raw(),
                        fare: wire_fare(&fare),
                    });
                    match self.request_peer(o, &m).await {
                        Some(Message::FareSetOk(v)) => Ok(v.version),
                        Some(Message::Error(e)) => Err(Refusal::from_reply(&e)),
                        _ => Err(Refusal::new(ErrorCode::Unavailable, format!("zone {zone}'s owner (node {o}) did not answer; nothing changed"))),
                    }
                }
                _ if !self.store_up.load(Ordering::Relaxed) => Err(Refusal::new(
                    ErrorCode::StoreUnavailable,
                    format!("redis is unavailable, so zone {zone}'s lease cannot be held; the fare table was not changed"),
                )),
                _ => Err(Refusal::new(ErrorCode::Unavailable, format!("zone {zone} is changing owner; nothing changed, retry"))),
            };
        }
        let Some(store) = self.store.get().cloned() else {
            return Err(Refusal::new(
                ErrorCode::StoreUnavailable,
                "redis is not connected; the fare table was not changed",
            ));
        };
        let _w = self.writer.lock().await;
        let cfg = self.engine.config();
        let limits = &cfg.zone;
        let current = self.engine.export(&[zone]).await?.pop();
        let mut core = match current {
            Some(e) => ZoneCore::import(e, limits)
                .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?,
            None => {
                let default = cfg
                    .default_fare
                    .to_table()
                    .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
                ZoneCore::new(zone, default, self.engine.clock().now_ms(), limits)
            }
        };
        core.set_fare(fare, limits)?;
        let epoch = self.serving.load().epoch(g, mono_ms()).ok_or(Refusal::new(
            ErrorCode::Unavailable,
            format!("zone {zone}'s lease lapsed; nothing changed, retry"),
        ))?;
        let bytes = cluster::persist::encode(&core.export());
        let r = write_chunks(
            &store,
            &self.metrics,
            self.me,
            g,
            epoch,
            &[(zone.raw(), bytes)],
        )
        .await;
        if !self.note_write(g, epoch, &r) {
            return Err(match r {
                Err(WriteFailure::Unreachable(e)) => Refusal::new(
                    ErrorCode::StoreUnavailable,
                    format!("redis: {e}; the fare table was not changed"),
                ),
                _ => Refusal::new(
                    ErrorCode::Unavailable,
                    format!("zone {zone} changed owner; nothing changed, retry"),
                ),
            });
        }
        self.engine.set_fare(zone, fare).await.map_err(|e| {
            Refusal::new(ErrorCode::Internal, format!("stored but not applied: {e}"))
        })?;
        Ok(fare.version)
    }

    /// A durable policy change: stored in Redis first, then applied here; the other nodes
    /// pick it up from Redis within a second.
    pub async fn policy_set(&self, frame: Vec<u8>, version: u32) -> Result<(), Refusal> {
        let Some(store) = self.store.get().cloned() else {
            return Err(Refusal::new(
                ErrorCode::StoreUnavailable,
                "redis is not connected; the policy was not changed",
            ));
        };
        let mut conn = store.connection();
        let key = format!("{}:policy", self.cfg.redis_prefix);
        // Compare-and-set on the version, atomically.
        let script = redis::Script::new(
            r"local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
              if tonumber(ARGV[1]) <= v then return v end
              redis.call('HSET', KEYS[1], 'version', ARGV[1], 'frame', ARGV[2])
              return -1",
        );
        let r: Result<i64, _> = script
            .key(&key)
            .arg(version)
            .arg(frame)
            .invoke_async(&mut conn)
            .await;
        match r {
            Ok(-1) => {
                self.note_store(true);
                Ok(())
            }
            Ok(v) => Err(Refusal::new(
                ErrorCode::Conflict,
                format!("policy version {version} is not newer than the stored {v}"),
            )),
            Err(e) => {
                self.note_store(false);
                Err(Refusal::new(
                    ErrorCode::StoreUnavailable,
                    format!("redis: {e}; the policy was not changed"),
                ))
            }
        }
    }

    /// The stored policy frame, if any (nodes poll it).
    pub async fn stored_policy(&self) -> Option<Vec<u8>> {
        let store = self.store.get()?;
        let mut conn = store.connection();
        let key = format!("{}:policy", self.cfg.redis_prefix);
        redis::cmd("HGET")
            .arg(key)
            .arg("frame")
            .query_async(&mut conn)
            .await
            .ok()
            .flatten()
    }
}

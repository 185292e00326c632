//! The actor shell: shard actors on actix arbiters, driven by a tokio-facing [`Engine`]
//! handle.
//!
//! Threads: one `equilibrium-actors` thread runs the actix `System`; it starts one `Arbiter`
//! (thread) per core and spreads the shard actors over them. Everything else (QUIC, Redis,
//! tests) lives on tokio and reaches a shard with `Addr::try_send`, so the mailbox bound
//! holds (`do_send` would ignore it). Replies come back on tokio oneshot channels.
//!
//! Each zone's state is owned by exactly one shard actor. Quotes never enter a mailbox:
//! they read the [`SnapshotTable`] directly through the [`Quoter`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use actix::prelude::*;
use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::config::{ConfigError, EngineConfig};
use crate::core::{HotState, ZoneCore, ZoneExport};
use crate::event::{Event, EventOutcome, Origin, Producer, RejectReason};
use crate::explain::Explanation;
use crate::fare::FareTable;
use crate::policy::{PolicyError, SurgePolicy};
use crate::quote::{QuoteKeys, QuoteToken, Quoter, TokenError};
use crate::shard::{
    FareSetError, Shard, ShardMemory, ShardSettings, SnapshotLog, TickSink, TickStats,
};
use crate::snapshot::SnapshotTable;
use crate::zone::ZoneId;

/// Why the engine did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The actor thread could not start.
    #[error("could not start the actor system: {0}")]
    Spawn(String),
}

/// Why a batch of events was refused as a whole (individual events get an
/// [`EventOutcome`] instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// More events than `actors.batch_events_max`; nothing was applied.
    #[error("batch of {len} events exceeds the limit of {max}; nothing was applied")]
    BatchTooLarge {
        /// Events in the batch.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Why a request to a shard failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    /// The shard's mailbox is full; retry with backoff.
    #[error("zone shard overloaded (mailbox full); retry later")]
    Overloaded,
    /// The engine is stopping.
    #[error("engine is stopped")]
    Stopped,
}

/// Why `explain` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// The token does not verify.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The owning shard could not answer.
    #[error(transparent)]
    Shell(#[from] ShellError),
}

/// Why `set_fare` failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SetFareError {
    /// The change was refused.
    #[error(transparent)]
    Refused(#[from] FareSetError),
    /// The zone is not at the engine's resolution.
    #[error(transparent)]
    Zone(#[from] crate::zone::ZoneError),
    /// The owning shard could not answer.
    #[error(transparent)]
    Shell(#[from] ShellError),
}

/// Memory held by the engine: the shards' zones plus the snapshot table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// The zones, summed over shards.
    pub shards: ShardMemory,
    /// Bytes of the snapshot table's slots (allocated once at start).
    pub table_bytes: usize,
}

/// What the shell reports after each timer tick of a shard (for metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickReport {
    /// The shard that ticked.
    pub shard: usize,
    /// How long its tick took (wall time, measured by the shell).
    pub elapsed: Duration,
    /// What the tick did.
    pub stats: TickStats,
}

/// A function told about every timer tick; see [`Engine::observe_ticks`].
pub struct TickObserver(Box<dyn Fn(&TickReport) + Send + Sync>);

impl std::fmt::Debug for TickObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TickObserver")
    }
}

/// Per-shard counters the shell keeps for observability: relaxed atomics, touched once per
/// message and once per tick, never per event or quote.
#[derive(Debug, Default)]
struct ShardGauges {
    /// Messages sent to the shard and not yet handled.
    mailbox_depth: AtomicUsize,
    /// Engine time of the shard's last completed tick (0 before the first).
    last_tick_ms: AtomicU64,
}

#[derive(Debug)]
struct ShellStats {
    shards: Box<[ShardGauges]>,
    zones: Arc<AtomicUsize>,
    tick_observer: ArcSwapOption<TickObserver>,
}

enum Command {
    Apply {
        origin: Origin,
        events: Vec<Event>,
        reply: oneshot::Sender<Vec<EventOutcome>>,
    },
    Tick {
        reply: oneshot::Sender<TickStats>,
    },
    SetFare {
        zone: ZoneId,
        fare: FareTable,
        reply: oneshot::Sender<Result<(), FareSetError>>,
    },
    FareVersion {
        zone: ZoneId,
        version: u32,
        reply: oneshot::Sender<Option<FareTable>>,
    },
    HotState {
        zone: ZoneId,
        reply: oneshot::Sender<Option<HotState>>,
    },
    SetPolicy {
        policy: Arc<SurgePolicy>,
        reply: oneshot::Sender<()>,
    },
    Memory {
        reply: oneshot::Sender<ShardMemory>,
    },
    Import {
        zones: Vec<ZoneCore>,
        reply: oneshot::Sender<usize>,
    },
    Remove {
        zones: Vec<ZoneId>,
        reply: oneshot::Sender<Vec<ZoneExport>>,
    },
    ExportDirty {
        all: bool,
        reply: oneshot::Sender<Vec<ZoneExport>>,
    },
    Export {
        zones: Vec<ZoneId>,
        reply: oneshot::Sender<Vec<ZoneExport>>,
    },
    ZoneIds {
        reply: oneshot::Sender<Vec<ZoneId>>,
    },
}

impl Message for Command {
    type Result = ();
}

struct ShardActor {
    index: usize,
    shard: Shard,
    clock: Arc<dyn Clock>,
    tick_interval_ms: u64,
    stats: Arc<ShellStats>,
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.tick_interval_ms > 0 {
            ctx.run_interval(Duration::from_millis(self.tick_interval_ms), |act, _| {
                let started = std::time::Instant::now();
                let now = act.clock.now_ms();
                let stats = act.shard.tick(now);
                act.stats.shards[act.index]
                    .last_tick_ms
                    .store(now, Ordering::Relaxed);
                if let Some(observer) = act.stats.tick_observer.load().as_ref() {
                    (observer.0)(&TickReport {
                        shard: act.index,
                        elapsed: started.elapsed(),
                        stats,
                    });
                }
            });
        }
    }
}

impl Handler<Command> for ShardActor {
    type Result = ();

    fn handle(&mut self, cmd: Command, _: &mut Self::Context) {
        self.stats.shards[self.index]
            .mailbox_depth
            .fetch_sub(1, Ordering::Relaxed);
        let now = self.clock.now_ms();
        // A dropped receiver means the caller gave up; nothing to do about it.
        match cmd {
            Command::Apply {
                origin,
                events,
                reply,
            } => {
                let mut out = Vec::with_capacity(events.len());
                self.shard.apply_as(origin, &events, now, &mut out);
                let _ = reply.send(out);
            }
            Command::Tick { reply } => {
                let stats = self.shard.tick(now);
                // Recorded before replying, so a caller that awaited the tick sees it.
                self.stats.shards[self.index]
                    .last_tick_ms
                    .store(now, Ordering::Relaxed);
                let _ = reply.send(stats);
            }
            Command::SetFare { zone, fare, reply } => {
                let _ = reply.send(self.shard.set_fare(zone, fare, now));
            }
            Command::FareVersion {
                zone,
                version,
                reply,
            } => {
                let _ = reply.send(self.shard.fare_version(zone, version));
            }
            Command::HotState { zone, reply } => {
                let _ = reply.send(self.shard.hot_state(zone));
            }
            Command::SetPolicy { policy, reply } => {
                self.shard.set_policy(policy);
                let _ = reply.send(());
            }
            Command::Memory { reply } => {
                let _ = reply.send(self.shard.memory());
            }
            Command::Import { zones, reply } => {
                let _ = reply.send(self.shard.import(zones, now));
            }
            Command::Remove { zones, reply } => {
                let _ = reply.send(self.shard.remove(&zones));
            }
            Command::ExportDirty { all, reply } => {
                let _ = reply.send(self.shard.export_dirty(all));
            }
            Command::Export { zones, reply } => {
                let _ = reply.send(self.shard.export(&zones));
            }
            Command::ZoneIds { reply } => {
                let _ = reply.send(self.shard.zone_ids());
            }
        }
    }
}

/// A running engine: the handle the node (and tests) use.
#[derive(Debug)]
pub struct Engine {
    shards: Vec<Addr<ShardActor>>,
    quoter: Arc<Quoter>,
    table: Arc<SnapshotTable>,
    policy: ArcSwap<SurgePolicy>,
    config: EngineConfig,
    clock: Arc<dyn Clock>,
    stats: Arc<ShellStats>,
    log: Arc<SnapshotLog>,
    system: Option<(actix_rt::System, JoinHandle<()>)>,
}

impl std::fmt::Debug for ShardActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardActor")
            .field("zones", &self.shard.len())
            .finish()
    }
}

impl Engine {
    /// Starts the actor system with `config`, signing quotes with `key` (a key, or a ring:
    /// one signs, all verify) and reading time from `clock`.
    pub fn start(
        config: EngineConfig,
        key: impl Into<QuoteKeys>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
        Self::start_with(config, key, clock, None, 0)
    }

    /// [`start`](Self::start), with every shard reporting its ticks to `sink` (the cluster
    /// replicates snapshots from there) and room in the snapshot table for `extra_slots`
    /// zones owned elsewhere (replicas).
    pub fn start_with(
        config: EngineConfig,
        key: impl Into<QuoteKeys>,
        clock: Arc<dyn Clock>,
        sink: Option<TickSink>,
        extra_slots: usize,
    ) -> Result<Self, StartError> {
        let config = config.validate()?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let a = &config.actors;
        let shard_n = if a.shards == 0 { cores } else { a.shards };
        let arbiter_n = if a.arbiters == 0 { cores } else { a.arbiters }.min(shard_n);
        // A zone keeps its slot after passivation: leave a quarter more room for zones coming
        // and going over the life of the process.
        let table = Arc::new(SnapshotTable::with_capacity(
            a.zones_max
                .saturating_add(a.zones_max / 4)
                .saturating_add(extra_slots),
        ));
        let zone_count = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(ShellStats {
            shards: (0..shard_n).map(|_| ShardGauges::default()).collect(),
            zones: Arc::clone(&zone_count),
            tick_observer: ArcSwapOption::empty(),
        });
        let settings = Arc::new(ShardSettings {
            limits: config.zone.clone(),
            default_fare: config.default_fare.to_table().map_err(ConfigError::from)?,
            zones_max: a.zones_max,
            zone_idle_evict_ms: a.zone_idle_evict_ms,
        });
        let policy = Arc::new(config.policy.clone());
        let start_ms = clock.now_ms();
        let quoter = Arc::new(Quoter::new(
            Arc::clone(&table),
            key,
            config.node_id,
            start_ms << 12,
            config.quotes.ttl_ms,
        ));

        let (tx, rx) = std::sync::mpsc::channel();
        let mailbox = a.mailbox_capacity;
        let tick_ms = a.tick_interval_ms;
        let (t2, c2, p2) = (Arc::clone(&table), Arc::clone(&clock), Arc::clone(&policy));
        let s2 = Arc::clone(&stats);
        let log_max = a.snapshot_history_max;
        let log = Arc::new(SnapshotLog::new(log_max));
        let l2 = Arc::clone(&log);
        let thread = std::thread::Builder::new()
            .name("equilibrium-actors".into())
            .spawn(move || {
                let runner = actix_rt::System::new();
                let arbiters: Vec<actix_rt::Arbiter> =
                    (0..arbiter_n).map(|_| actix_rt::Arbiter::new()).collect();
                let addrs: Vec<Addr<ShardActor>> = (0..shard_n)
                    .map(|i| {
                        let mut shard = Shard::new(
                            Arc::clone(&t2),
                            Arc::clone(&zone_count),
                            Arc::clone(&settings),
                            Arc::clone(&p2),
                        );
                        if let Some(sink) = &sink {
                            shard.set_sink(Arc::clone(sink));
                        }
                        if log_max > 0 {
                            shard.set_log(Arc::clone(&l2));
                        }
                        let clock = Arc::clone(&c2);
                        let stats = Arc::clone(&s2);
                        ShardActor::start_in_arbiter(
                            &arbiters[i % arbiter_n].handle(),
                            move |ctx| {
                                ctx.set_mailbox_capacity(mailbox);
                                ShardActor {
                                    index: i,
                                    shard,
                                    clock,
                                    tick_interval_ms: tick_ms,
                                    stats,
                                }
                            },
                        )
                    })
                    .collect();
                if tx.send((addrs, actix_rt::System::current())).is_err() {
                    return;
                }
                runner.run().ok();
                for arb in arbiters {
                    arb.stop();
                    arb.join().ok();
                }
            })
            .map_err(|e| StartError::Spawn(e.to_string()))?;
        let (shards, system) = rx.recv().map_err(|e| StartError::Spawn(e.to_string()))?;
        Ok(Self {
            shards,
            quoter,
            table,
            policy: ArcSwap::new(policy),
            config,
            clock,
            stats,
            log,
            system: Some((system, thread)),
        })
    }

    /// Calls `observer` after every timer tick of every shard, on the shard's thread (keep it
    /// cheap: it runs between ticks). Replaces any earlier observer.
    pub fn observe_ticks(&self, observer: impl Fn(&TickReport) + Send + Sync + 'static) {
        self.stats
            .tick_observer
            .store(Some(Arc::new(TickObserver(Box::new(observer)))));
    }

    /// Messages waiting in each shard's mailbox now (each bounded by
    /// `actors.mailbox_capacity`).
    pub fn mailbox_depths(&self) -> impl Iterator<Item = usize> + '_ {
        self.stats
            .shards
            .iter()
            .map(|s| s.mailbox_depth.load(Ordering::Relaxed))
    }

    /// Engine time of the least recent shard tick (0 if some shard has not ticked yet): every
    /// live zone's snapshot was confirmed at or after it.
    pub fn oldest_tick_ms(&self) -> u64 {
        self.stats
            .shards
            .iter()
            .map(|s| s.last_tick_ms.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Zones live in this engine now (all shards).
    pub fn zones_live(&self) -> usize {
        self.stats.zones.load(Ordering::Relaxed)
    }

    /// Up to `n` of the zone's recently published snapshots (newest first), from the last
    /// `snapshot_history_max` published by this node.
    pub fn history(&self, zone: ZoneId, n: usize) -> Vec<crate::PriceSnapshot> {
        self.log.of(zone, n)
    }

    /// The quoter: call it from any thread; it never touches an actor.
    pub fn quoter(&self) -> &Arc<Quoter> {
        &self.quoter
    }

    /// The snapshot table.
    pub fn table(&self) -> &Arc<SnapshotTable> {
        &self.table
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The clock the engine reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn shard_of(&self, zone: ZoneId) -> usize {
        shard_index(zone, self.shards.len())
    }

    fn send(&self, shard: usize, cmd: Command) -> Result<(), ShellError> {
        // Counted before sending, so the handler's decrement can never come first.
        let depth = &self.stats.shards[shard].mailbox_depth;
        depth.fetch_add(1, Ordering::Relaxed);
        self.shards[shard].try_send(cmd).map_err(|e| {
            depth.fetch_sub(1, Ordering::Relaxed);
            match e {
                SendError::Full(_) => ShellError::Overloaded,
                SendError::Closed(_) => ShellError::Stopped,
            }
        })
    }

    async fn ask<T>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ShellError> {
        let (tx, rx) = oneshot::channel();
        self.send(shard, make(tx))?;
        rx.await.map_err(|_| ShellError::Stopped)
    }

    /// Applies a batch of events; one outcome per event, in order. Events for zones at another
    /// resolution are rejected; a shard with a full mailbox rejects its events as
    /// `overloaded` (nothing of those was applied, so they can be resent).
    pub async fn apply_batch(&self, events: Vec<Event>) -> Result<Vec<EventOutcome>, IngestError> {
        self.apply_batch_from(None, events).await
    }

    /// [`apply_batch`](Self::apply_batch) for a batch from `producer` (its events' ids are
    /// their sequences per zone, see [`crate::producer`]), or without one.
    pub async fn apply_batch_from(
        &self,
        producer: Option<Producer>,
        events: Vec<Event>,
    ) -> Result<Vec<EventOutcome>, IngestError> {
        self.apply_batch_as(producer.into(), events).await
    }

    /// [`apply_batch_from`](Self::apply_batch_from) for a batch from `origin`: its credential,
    /// when it has one, is held to its share of each zone's capacities ([`crate::share`]).
    pub async fn apply_batch_as(
        &self,
        origin: Origin,
        events: Vec<Event>,
    ) -> Result<Vec<EventOutcome>, IngestError> {
        let max = self.config.actors.batch_events_max;
        if events.len() > max {
            return Err(IngestError::BatchTooLarge {
                len: events.len(),
                max,
            });
        }
        let mut outcomes = vec![EventOutcome::Rejected(RejectReason::Stopped); events.len()];
        let n = self.shards.len();
        let mut groups: Vec<(Vec<Event>, Vec<u32>)> =
            (0..n).map(|_| (Vec::new(), Vec::new())).collect();
        for (i, ev) in events.into_iter().enumerate() {
            if ev.zone.resolution() != self.config.resolution {
                outcomes[i] = EventOutcome::Rejected(RejectReason::WrongResolution);
                continue;
            }
            let g = &mut groups[self.shard_of(ev.zone)];
            g.0.push(ev);
            g.1.push(i as u32);
        }
        let mut waits = Vec::new();
        for (shard, (evs, idx)) in groups.into_iter().enumerate() {
            if evs.is_empty() {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            match self.send(
                shard,
                Command::Apply {
                    origin,
                    events: evs,
                    reply: tx,
                },
            ) {
                Ok(()) => waits.push((rx, idx)),
                Err(e) => {
                    let r = match e {
                        ShellError::Overloaded => RejectReason::Overloaded,
                        ShellError::Stopped => RejectReason::Stopped,
                    };
                    for i in idx {
                        outcomes[i as usize] = EventOutcome::Rejected(r);
                    }
                }
            }
        }
        for (rx, idx) in waits {
            if let Ok(res) = rx.await {
                for (o, i) in res.into_iter().zip(idx) {
                    outcomes[i as usize] = o;
                }
            }
        }
        Ok(outcomes)
    }

    /// Runs one tick on every shard now (besides the timer), and waits for all.
    pub async fn tick_now(&self) -> Result<TickStats, ShellError> {
        let mut rxs = Vec::with_capacity(self.shards.len());
        for s in 0..self.shards.len() {
            let (tx, rx) = oneshot::channel();
            self.send(s, Command::Tick { reply: tx })?;
            rxs.push(rx);
        }
        let mut total = TickStats::default();
        for rx in rxs {
            total += rx.await.map_err(|_| ShellError::Stopped)?;
        }
        Ok(total)
    }

    /// Changes a zone's fare table. The version must be newer than the zone's current one.
    pub async fn set_fare(&self, zone: ZoneId, fare: FareTable) -> Result<(), SetFareError> {
        zone.check_resolution(self.config.resolution)?;
        self.ask(self.shard_of(zone), |reply| Command::SetFare {
            zone,
            fare,
            reply,
        })
        .await??;
        Ok(())
    }

    /// Replaces the surge policy on every shard. The version must change.
    pub async fn set_policy(&self, policy: SurgePolicy) -> Result<(), PolicyChangeError> {
        let policy = policy.validate()?;
        let current = self.policy.load().version;
        if policy.version <= current {
            return Err(PolicyChangeError::StaleVersion {
                current,
                proposed: policy.version,
            });
        }
        let policy = Arc::new(policy);
        self.policy.store(Arc::clone(&policy));
        for s in 0..self.shards.len() {
            let p = Arc::clone(&policy);
            self.ask(s, |reply| Command::SetPolicy { policy: p, reply })
                .await?;
        }
        Ok(())
    }

    /// The current surge policy.
    pub fn policy(&self) -> Arc<SurgePolicy> {
        self.policy.load_full()
    }

    /// A zone's hot state, if live on this node.
    pub async fn hot_state(&self, zone: ZoneId) -> Result<Option<HotState>, ShellError> {
        self.ask(self.shard_of(zone), |reply| Command::HotState {
            zone,
            reply,
        })
        .await
    }

    /// Verifies a quote token and gathers the inputs behind its price.
    pub async fn explain(&self, token: &[u8]) -> Result<Explanation, ExplainError> {
        let t: QuoteToken = self.quoter.verify(token, self.clock.now_ms())?;
        let (zone, version) = (t.zone, t.fare_version);
        let fare = self
            .ask(self.shard_of(zone), |reply| Command::FareVersion {
                zone,
                version,
                reply,
            })
            .await?;
        Ok(Explanation::new(
            t,
            fare,
            Some((*self.policy.load_full()).clone()),
        ))
    }

    /// Memory held by hot state, summed over shards.
    pub async fn memory(&self) -> Result<MemoryStats, ShellError> {
        let mut total = MemoryStats {
            table_bytes: self.table.bytes(),
            ..MemoryStats::default()
        };
        for s in 0..self.shards.len() {
            total.shards += self.ask(s, |reply| Command::Memory { reply }).await?;
        }
        Ok(total)
    }

    /// Installs restored zones (taking a zone over), replacing live copies; each publishes a
    /// snapshot at once. Returns how many did not fit (`zones_max`).
    pub async fn import(&self, zones: Vec<ZoneCore>) -> Result<usize, ShellError> {
        let mut per: Vec<Vec<ZoneCore>> = (0..self.shards.len()).map(|_| Vec::new()).collect();
        for z in zones {
            per[self.shard_of(z.zone())].push(z);
        }
        let mut failed = 0;
        for (s, zones) in per.into_iter().enumerate() {
            if !zones.is_empty() {
                failed += self
                    .ask(s, |reply| Command::Import { zones, reply })
                    .await?;
            }
        }
        Ok(failed)
    }

    /// Takes zones out of the engine (handing them over) and returns their final state.
    /// Their snapshots stay in the table until the new owner's replace them.
    pub async fn remove(&self, zones: &[ZoneId]) -> Result<Vec<ZoneExport>, ShellError> {
        let mut out = Vec::new();
        for (s, zones) in self.split(zones).into_iter().enumerate() {
            if !zones.is_empty() {
                out.extend(
                    self.ask(s, |reply| Command::Remove { zones, reply })
                        .await?,
                );
            }
        }
        Ok(out)
    }

    /// The state of the given live zones.
    pub async fn export(&self, zones: &[ZoneId]) -> Result<Vec<ZoneExport>, ShellError> {
        let mut out = Vec::new();
        for (s, zones) in self.split(zones).into_iter().enumerate() {
            if !zones.is_empty() {
                out.extend(
                    self.ask(s, |reply| Command::Export { zones, reply })
                        .await?,
                );
            }
        }
        Ok(out)
    }

    /// The state of every zone changed since the last call (`all`: every zone), clearing
    /// the marks.
    pub async fn export_dirty(&self, all: bool) -> Result<Vec<ZoneExport>, ShellError> {
        let mut out = Vec::new();
        for s in 0..self.shards.len() {
            out.extend(
                self.ask(s, |reply| Command::ExportDirty { all, reply })
                    .await?,
            );
        }
        Ok(out)
    }

    /// Every zone live in the engine.
    pub async fn zone_ids(&self) -> Result<Vec<ZoneId>, ShellError> {
        let mut out = Vec::new();
        for s in 0..self.shards.len() {
            out.extend(self.ask(s, |reply| Command::ZoneIds { reply }).await?);
        }
        Ok(out)
    }

    fn split(&self, zones: &[ZoneId]) -> Vec<Vec<ZoneId>> {
        let mut per: Vec<Vec<ZoneId>> = (0..self.shards.len()).map(|_| Vec::new()).collect();
        for &z in zones {
            per[self.shard_of(z)].push(z);
        }
        per
    }

    /// Stops the actors and joins their threads. Called by `Drop` too.
    pub fn shutdown(&mut self) {
        if let Some((system, thread)) = self.system.take() {
            system.stop();
            thread.join().ok();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Why `set_policy` failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyChangeError {
    /// A parameter is out of range.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// Policy versions must increase so that quotes name policies unambiguously.
    #[error("policy version {proposed} is not newer than the current version {current}")]
    StaleVersion {
        /// Current version.
        current: u32,
        /// Offered version.
        proposed: u32,
    },
    /// A shard could not take it.
    #[error(transparent)]
    Shell(#[from] ShellError),
}

/// The shard (of `shards`) that owns `zone`: a multiplicative hash of its id, so the zones of
/// a city spread evenly. Public so that tests and benchmarks can pick zones that share a
/// shard (or do not).
pub fn shard_index(zone: ZoneId, shards: usize) -> usize {
    assert!(shards > 0, "at least one shard");
    ((zone.raw().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) % shards as u64) as usize
}

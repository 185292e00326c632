//! The composition root of a node: the engine, the cluster shell (when `[cluster]` is
//! configured) and the client endpoint, started in the order they depend on each other. The
//! binary (`equilibrium node`) only loads the configuration, calls these two steps and waits
//! for a signal.
//!
//! Two steps, because the engine's actors run on a thread of their own that must not be
//! started from inside a tokio runtime: [`start_engine`] outside it, [`start_node`] inside.

use std::sync::Arc;

use engine::{Engine, EngineConfig, QuoteKeys};

use crate::cluster::{tick_channel, Cluster, ClusterError, TickReceiver};
use crate::config::NodeConfig;
use crate::node::{Node, StartError};

/// Why a node could not be composed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The engine did not start.
    #[error(transparent)]
    Engine(#[from] engine::shell::StartError),
    /// The cluster shell did not start.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The client endpoint did not start.
    #[error(transparent)]
    Node(#[from] StartError),
    /// A secret is a published sample (outside development mode) or a key file is open to
    /// group or others.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretError),
    /// The client socket could not be bound.
    #[error("binding {addr} (listen): {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A started engine, and for a clustered node the replicator's end of its tick sink.
#[derive(Debug)]
pub struct StartedEngine {
    /// The engine.
    pub engine: Arc<Engine>,
    ticks: Option<TickReceiver>,
}

/// Starts the engine for `cfg` (outside any tokio runtime): with a tick sink and room for
/// replicas when the node is clustered. Checks the node's secrets first
/// ([`crate::secrets::check`]).
pub fn start_engine(
    cfg: &NodeConfig,
    mut engine_cfg: EngineConfig,
    key: impl Into<QuoteKeys>,
) -> Result<StartedEngine, ComposeError> {
    crate::secrets::check(cfg)?;
    // Credentials are the node's: so is their share of a zone (`engine::share`).
    engine_cfg.zone.credential_share_percent = cfg.limits.zone_share_per_credential_percent;
    let clock = Arc::new(engine::SystemClock);
    let Some(c) = &cfg.cluster else {
        let engine = Engine::start(engine_cfg, key, clock)?;
        return Ok(StartedEngine {
            engine: Arc::new(engine),
            ticks: None,
        });
    };
    let (sink, ticks) = tick_channel(c.replication_queue_max);
    let engine = Engine::start_with(engine_cfg, key, clock, Some(sink), c.replica_zones_max)?;
    Ok(StartedEngine {
        engine: Arc::new(engine),
        ticks: Some(ticks),
    })
}

/// Starts the cluster shell (if configured) and the client endpoint, inside the tokio
/// runtime. Returns the node and, when clustered, the cluster (to wait for a drain).
pub fn start_node(
    cfg: &NodeConfig,
    started: StartedEngine,
) -> Result<(Node, Option<Arc<Cluster>>), ComposeError> {
    let StartedEngine { engine, ticks } = started;
    let (Some(ccfg), Some(ticks)) = (cfg.cluster.clone(), ticks) else {
        return Ok((Node::builder(cfg, engine).start()?, None));
    };
    let metrics = Arc::new(telemetry::Metrics::new(engine.config().node_id));
    // Bind the client socket first: peers learn this node's client address from the
    // cluster, so with port 0 they must be told the port actually bound, not 0.
    let socket = std::net::UdpSocket::bind(cfg.listen).map_err(|source| ComposeError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let client_addr = socket.local_addr().map_err(|source| ComposeError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let (cluster, forwarded) = Cluster::start(
        ccfg,
        Arc::clone(&engine),
        ticks,
        Arc::clone(&metrics),
        client_addr,
    )?;
    let node = Node::builder(cfg, engine)
        .metrics(metrics)
        .cluster(Arc::clone(&cluster), forwarded)
        .socket(socket)
        .start()?;
    Ok((node, Some(cluster)))
}

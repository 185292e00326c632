//! The lease rules of [`crate::lease::StoreModel`], run by Redis as Lua scripts, so that each
//! operation is atomic and uses one clock: Redis's own (`TIME`).
//!
//! Keys (per cluster prefix `P`): `P:incarnation` (a random id, set when the store is found
//! empty), `P:quiet_until` (ms: nothing is granted before it, a lease length after the store
//! was found empty), `P:lease:{group}` (hash: `epoch`, `holder`, `expires`), `P:snap:{group}`
//! (hash: zone id → that zone's last snapshot, written fenced by epoch), `P:groups` (set of
//! groups with snapshots), `P:policy` (hash: `version`, `frame`: the stored surge policy as a
//! `POLICY_SET` protocol frame, written by a version compare-and-set in `server::cluster`).
//!
//! Every script first checks `P:incarnation`: a store that restarted empty is detected there,
//! answers `recovering` for a lease length (so leases granted before the restart lapse first)
//! and never hands out an epoch below what the asking node has seen (`min_epoch`).

use redis::aio::ConnectionManager;
use redis::Script;

use crate::lease::StoreError;
use crate::ownership::NodeId;

/// Shared prologue: now (ms, Redis clock), incarnation bootstrap, quiet period.
const PROLOGUE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local inc = redis.call('GET', KEYS[1])
if not inc then
  inc = ARGV[1]
  redis.call('SET', KEYS[1], inc)
  redis.call('SET', KEYS[2], now + tonumber(ARGV[2]))
end
local quiet = tonumber(redis.call('GET', KEYS[2]) or '0')
";

/// KEYS: incarnation, quiet_until, lease. ARGV: candidate incarnation, ttl, node, min_epoch.
const ACQUIRE: &str = r"
if now < quiet then return {'recovering', inc, 0} end
local l = redis.call('HMGET', KEYS[3], 'epoch', 'holder', 'expires')
local epoch = tonumber(l[1] or '0')
local holder = l[2]
local expires = tonumber(l[3] or '0')
local node = ARGV[3]
local min_epoch = tonumber(ARGV[4])
if holder and expires > now then
  if holder ~= node then return {'held', inc, tonumber(holder)} end
else
  epoch = math.max(epoch, min_epoch) + 1
end
redis.call('HSET', KEYS[3], 'epoch', epoch, 'holder', node, 'expires', now + tonumber(ARGV[2]))
return {'ok', inc, epoch}
";

/// KEYS: incarnation, quiet_until, lease. ARGV: candidate incarnation, ttl, node, epoch.
const RENEW: &str = r"
local l = redis.call('HMGET', KEYS[3], 'epoch', 'holder', 'expires')
local epoch = tonumber(l[1] or '0')
if l[2] == ARGV[3] and epoch == tonumber(ARGV[4]) and tonumber(l[3] or '0') > now then
  redis.call('HSET', KEYS[3], 'expires', now + tonumber(ARGV[2]))
  return {'ok', inc, epoch}
end
return {'stale', inc, epoch}
";

/// KEYS: incarnation, quiet_until, lease. ARGV: candidate incarnation, ttl, node, epoch.
const RELEASE: &str = r"
local l = redis.call('HMGET', KEYS[3], 'epoch', 'holder')
if l[2] == ARGV[3] and tonumber(l[1] or '0') == tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[3], 'expires', 0)
end
return {'ok', inc, tonumber(l[1] or '0')}
";

/// KEYS: incarnation, quiet_until, lease, snapshot hash, group set. ARGV: candidate
/// incarnation, ttl, epoch, group, then zone/payload pairs.
const WRITE: &str = r"
local l = redis.call('HMGET', KEYS[3], 'epoch', 'expires')
local epoch = tonumber(l[1] or '0')
if epoch == tonumber(ARGV[3]) and tonumber(l[2] or '0') > now then
  if #ARGV > 4 then
    redis.call('HSET', KEYS[4], unpack(ARGV, 5))
  end
  redis.call('SADD', KEYS[5], ARGV[4])
  return {'ok', inc, epoch}
end
redis.call('INCR', KEYS[1] .. ':stale_writes')
return {'stale', inc, epoch}
";

/// Most zones one fenced write carries (Lua's `unpack` has a stack limit); a group with more
/// dirty zones is written in several calls, each fenced.
pub const WRITE_ZONES_MAX: usize = 1_000;

/// Why a Redis lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    /// Redis is unreachable or answered with an error; the operation may or may not have run
    /// (the scripts are idempotent for a given epoch, so retrying is safe).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The script answered something unexpected (a bug).
    #[error("unexpected answer from the lease script: {0}")]
    Protocol(String),
}

/// The store's answer: its incarnation and the outcome.
pub type Answer = (u64, Result<u64, StoreError>);

/// The fenced lease store in Redis.
#[derive(Clone)]
pub struct RedisLeaseStore {
    conn: ConnectionManager,
    prefix: String,
    ttl_ms: u64,
    /// Used as the incarnation id if this node is the first to find the store empty.
    candidate_incarnation: u64,
    scripts: [Script; 4],
}

impl std::fmt::Debug for RedisLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLeaseStore")
            .field("prefix", &self.prefix)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

impl RedisLeaseStore {
    /// Connects (reconnecting by itself later) to `url`. `candidate_incarnation` should differ
    /// between nodes and restarts (e.g. random, or node id and start time).
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl_ms: u64,
        candidate_incarnation: u64,
    ) -> Result<Self, RedisStoreError> {
        let client = redis::Client::open(url)?;
        // Bounded: a dead or hung Redis answers an error within a fraction of a lease, so
        // the node notices (and reports) it instead of waiting; reconnects back off to 1 s.
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_millis(500)))
            .set_response_timeout(Some(std::time::Duration::from_millis(500)))
            .set_number_of_retries(2)
            .set_max_delay(std::time::Duration::from_millis(1_000));
        let conn = client.get_connection_manager_with_config(cfg).await?;
        let s = |body: &str| Script::new(&format!("{PROLOGUE}{body}"));
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            ttl_ms,
            candidate_incarnation,
            scripts: [s(ACQUIRE), s(RENEW), s(RELEASE), s(WRITE)],
        })
    }

    fn keys(&self, group: u64) -> [String; 4] {
        let p = &self.prefix;
        [
            format!("{p}:incarnation"),
            format!("{p}:quiet_until"),
            format!("{p}:lease:{group}"),
            format!("{p}:snap:{group}"),
        ]
    }

    /// The Redis key prefix of this cluster.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A connection (multiplexed; clones share it) for plain commands.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn run(
        &self,
        which: usize,
        group: u64,
        args: &[String],
    ) -> Result<Answer, RedisStoreError> {
        let keys = self.keys(group);
        let mut inv = self.scripts[which].prepare_invoke();
        let nkeys = if which == 3 { 4 } else { 3 };
        for k in &keys[..nkeys] {
            inv.key(k);
        }
        inv.arg(self.candidate_incarnation).arg(self.ttl_ms);
        for a in args {
            inv.arg(a);
        }
        let mut conn = self.conn.clone();
        let (status, inc, n): (String, u64, u64) = inv.invoke_async(&mut conn).await?;
        let result = match status.as_str() {
            "ok" => Ok(n),
            "held" => Err(StoreError::Held {
                holder: NodeId::try_from(n).unwrap_or(NodeId::MAX),
            }),
            "stale" => Err(StoreError::Stale { current: n }),
            "recovering" => Err(StoreError::Recovering),
            other => return Err(RedisStoreError::Protocol(other.to_owned())),
        };
        Ok((inc, result))
    }

    /// `StoreModel::acquire`, in Redis.
    pub async fn acquire(
        &self,
        group: u64,
        node: NodeId,
        min_epoch: u64,
    ) -> Result<Answer, RedisStoreError> {
        self.run(0, group, &[node.to_string(), min_epoch.to_string()])
            .await
    }

    /// `StoreModel::renew`, in Redis.
    pub async fn renew(
        &self,
        group: u64,
        node: NodeId,
        epoch: u64,
    ) -> Result<Answer, RedisStoreError> {
        self.run(1, group, &[node.to_string(), epoch.to_string()])
            .await
    }

    /// `StoreModel::release`, in Redis.
    pub async fn release(
        &self,
        group: u64,
        node: NodeId,
        epoch: u64,
    ) -> Result<Answer, RedisStoreError> {
        self.run(2, group, &[node.to_string(), epoch.to_string()])
            .await
    }

    /// A fenced snapshot write of some zones of a group: stored only if `epoch` is the
    /// group's current epoch and its lease has not lapsed. At most [`WRITE_ZONES_MAX`] zones.
    pub async fn write(
        &self,
        group: u64,
        epoch: u64,
        zones: &[(u64, Vec<u8>)],
    ) -> Result<Answer, RedisStoreError> {
        let keys = self.keys(group);
        let mut inv = self.scripts[3].prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        inv.key(format!("{}:groups", self.prefix));
        inv.arg(self.candidate_incarnation)
            .arg(self.ttl_ms)
            .arg(epoch)
            .arg(group);
        for (zone, payload) in zones.iter().take(WRITE_ZONES_MAX) {
            inv.arg(*zone).arg(payload.as_slice());
        }
        let mut conn = self.conn.clone();
        let (status, inc, n): (String, u64, u64) = inv.invoke_async(&mut conn).await?;
        Ok((
            inc,
            if status == "ok" {
                Ok(n)
            } else {
                Err(StoreError::Stale { current: n })
            },
        ))
    }

    /// Every zone snapshot stored for a group: (zone id, payload).
    pub async fn read_group(&self, group: u64) -> Result<Vec<(u64, Vec<u8>)>, RedisStoreError> {
        let mut conn = self.conn.clone();
        let v: Vec<(u64, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(format!("{}:snap:{group}", self.prefix))
            .query_async(&mut conn)
            .await?;
        Ok(v)
    }

    /// The groups that have snapshots.
    pub async fn groups(&self) -> Result<Vec<u64>, RedisStoreError> {
        let mut conn = self.conn.clone();
        let v: Vec<u64> = redis::cmd("SMEMBERS")
            .arg(format!("{}:groups", self.prefix))
            .query_async(&mut conn)
            .await?;
        Ok(v)
    }

    /// Stale snapshot writes the store has refused since it last started empty.
    pub async fn stale_writes(&self) -> Result<u64, RedisStoreError> {
        let mut conn = self.conn.clone();
        let n: Option<u64> = redis::cmd("GET")
            .arg(format!("{}:incarnation:stale_writes", self.prefix))
            .query_async(&mut conn)
            .await?;
        Ok(n.unwrap_or(0))
    }
}

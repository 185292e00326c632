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
//! Every value a script reads is checked first (decimal integers only): a bad one is answered
//! [`RedisStoreError::Corrupt`], naming its key and field, and changes nothing; a quiet period
//! ending more than a lease length ahead is clamped to one lease length and reported
//! ([`RedisLeaseStore::take_clamped`]). A snapshot hash field that is not a zone id costs that
//! field only ([`GroupSnapshots::bad`]).
//!
//! Every script first checks `P:incarnation`: a store that restarted empty is detected there,
//! answers `recovering` for a lease length (so leases granted before the restart lapse first)
//! and never hands out an epoch below what the asking node has seen (`min_epoch`).

use redis::aio::ConnectionManager;
use redis::Script;

use crate::lease::StoreError;
use crate::ownership::NodeId;

/// Shared prologue: now (ms, Redis clock), incarnation bootstrap, quiet period, and the
/// checks of every stored value a script reads (see [`StoreValue`]): a value that is not a
/// decimal integer is answered `{'corrupt', key, field, value}`, never a script error (which
/// the node could not tell from Redis being down). A quiet period ending more than one lease
/// length ahead of Redis's clock cannot have been set by a store found empty (it sets now +
/// ttl): it is clamped to now + ttl, and the answer's fourth element carries the old value
/// so the node reports it.
const PROLOGUE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function num(v)
  if type(v) ~= 'string' or #v == 0 or #v > 15 or not string.match(v, '^%d+$') then return nil end
  return tonumber(v)
end
local bad = nil
local function field(key, name, v)
  if v == false or v == nil then return 0 end
  local n = num(v)
  if not n then
    bad = bad or {'corrupt', key, name, tostring(v)}
    return 0
  end
  return n
end
local inc = redis.call('GET', KEYS[1])
if not inc then
  inc = ARGV[1]
  redis.call('SET', KEYS[1], inc)
  redis.call('SET', KEYS[2], now + tonumber(ARGV[2]))
end
if type(inc) ~= 'string' or #inc > 19 or not (inc == '0' or string.match(inc, '^[1-9]%d*$')) then
  return {'corrupt', KEYS[1], '', tostring(inc)}
end
local notice = ''
local quiet = field(KEYS[2], '', redis.call('GET', KEYS[2]))
if bad then return bad end
if quiet > now + tonumber(ARGV[2]) then
  notice = redis.call('GET', KEYS[2])
  quiet = now + tonumber(ARGV[2])
  redis.call('SET', KEYS[2], quiet)
end
";

/// KEYS: incarnation, quiet_until, lease. ARGV: candidate incarnation, ttl, node, min_epoch.
const ACQUIRE: &str = r"
if now < quiet then return {'recovering', inc, 0, notice} end
local l = redis.call('HMGET', KEYS[3], 'epoch', 'holder', 'expires')
local epoch = field(KEYS[3], 'epoch', l[1])
local holder = l[2]
field(KEYS[3], 'holder', holder)
local expires = field(KEYS[3], 'expires', l[3])
if bad then return bad end
local node = ARGV[3]
local min_epoch = tonumber(ARGV[4])
if holder and expires > now then
  if holder ~= node then return {'held', inc, tonumber(holder), notice} end
else
  epoch = math.max(epoch, min_epoch) + 1
end
redis.call('HSET', KEYS[3], 'epoch', epoch, 'holder', node, 'expires', now + tonumber(ARGV[2]))
return {'ok', inc, epoch, notice}
";

/// KEYS: incarnation, quiet_until, lease. ARGV: candidate incarnation, ttl, node, epoch.
const RENEW: &str = r"
local l = redis.call('HMGET', KEYS[3], 'epoch', 'holder', 'expires')
local epoch = field(KEYS[3], 'epoch', l[1])
local expires = field(KEYS[3], 'expires', l[3])
if bad then return bad end
if l[2] == ARGV[3] and epoch == tonumber(ARGV[4]) and expires > now then
  redis.call('HSET', KEYS[3], 'expires', now + tonumber(ARGV[2]))
  return {'ok', inc, epoch, notice}
end
return {'stale', inc, epoch, notice}
";

/// KEYS: incarnation, quiet_until, lease. ARGV: candidate incarnation, ttl, node, epoch.
const RELEASE: &str = r"
local l = redis.call('HMGET', KEYS[3], 'epoch', 'holder')
local epoch = field(KEYS[3], 'epoch', l[1])
if bad then return bad end
if l[2] == ARGV[3] and epoch == tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[3], 'expires', 0)
end
return {'ok', inc, epoch, notice}
";

/// KEYS: incarnation, quiet_until, lease, snapshot hash, group set. ARGV: candidate
/// incarnation, ttl, epoch, group, node, then zone/payload pairs. The holder is checked with
/// the epoch: after a restart empty, epochs start again from what each asking node has seen,
/// so a node that never saw the group may be granted a number an earlier holder had used
/// before the restart; that holder's late write must not pass for the new one's.
const WRITE: &str = r"
local l = redis.call('HMGET', KEYS[3], 'epoch', 'expires', 'holder')
local epoch = field(KEYS[3], 'epoch', l[1])
local expires = field(KEYS[3], 'expires', l[2])
field(KEYS[3], 'holder', l[3])
if bad then return bad end
if epoch == tonumber(ARGV[3]) and expires > now and l[3] == ARGV[5] then
  if #ARGV > 5 then
    redis.call('HSET', KEYS[4], unpack(ARGV, 6))
  end
  redis.call('SADD', KEYS[5], ARGV[4])
  return {'ok', inc, epoch, notice}
end
redis.call('INCR', KEYS[1] .. ':stale_writes')
return {'stale', inc, epoch, notice}
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
    /// A stored value the operation reads is not what this cluster writes there (edited by
    /// hand, another program, a bug): Redis is up, nothing was changed, and the operation
    /// fails until the value is repaired (SECURITY.md, "Redis"). Retrying is safe.
    #[error("{0}")]
    Corrupt(StoreValue),
}

/// A stored value that does not decode: its key, its field (for hashes) and the value as
/// found (lossy UTF-8, at most [`BAD_VALUE_SHOWN_MAX`] bytes of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreValue {
    /// The Redis key.
    pub key: String,
    /// The hash field, or empty for a plain string key.
    pub field: String,
    /// The value found.
    pub value: String,
}

/// Bytes of a bad value shown in a log line (values may be large or binary).
pub const BAD_VALUE_SHOWN_MAX: usize = 64;

impl StoreValue {
    fn new(key: &str, field: &str, value: &[u8]) -> Self {
        let shown = &value[..value.len().min(BAD_VALUE_SHOWN_MAX)];
        Self {
            key: key.to_owned(),
            field: field.to_owned(),
            value: String::from_utf8_lossy(shown).into_owned(),
        }
    }
}

impl std::fmt::Display for StoreValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "bad value in redis key {}: {:?}", self.key, self.value)
        } else {
            write!(
                f,
                "bad value in redis key {} field {}: {:?}",
                self.key, self.field, self.value
            )
        }
    }
}

/// The store's answer: its incarnation and the outcome.
pub type Answer = (u64, Result<u64, StoreError>);

/// A script's answer, checked: status, incarnation, number, and the quiet period's old value
/// when the script clamped it (empty otherwise).
fn decode_answer(v: redis::Value) -> Result<(String, u64, u64, String), RedisStoreError> {
    let proto = |what: &str| RedisStoreError::Protocol(what.to_owned());
    let items: Vec<redis::Value> =
        redis::from_redis_value(v).map_err(|e| proto(&format!("not an array: {e}")))?;
    let text = |v: &redis::Value| -> String {
        redis::from_redis_value_ref::<Vec<u8>>(v)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let status = items.first().map(text).unwrap_or_default();
    if status == "corrupt" {
        let at = |i: usize| items.get(i).map(text).unwrap_or_default();
        return Err(RedisStoreError::Corrupt(StoreValue::new(
            &at(1),
            &at(2),
            at(3).as_bytes(),
        )));
    }
    if items.len() != 4 {
        return Err(proto(&format!("{} elements", items.len())));
    }
    // Integers checked by hand: a negative one must not wrap into a huge epoch.
    let number = |v: &redis::Value, what: &str| -> Result<u64, RedisStoreError> {
        match v {
            redis::Value::Int(i) => u64::try_from(*i).map_err(|_| proto(&format!("{what} {i}"))),
            other => {
                let t = text(other);
                decode_zone_field(t.as_bytes()).ok_or_else(|| proto(&format!("{what} {t:?}")))
            }
        }
    };
    let inc = number(&items[1], "incarnation")?;
    let n = number(&items[2], "number")?;
    Ok((status, inc, n, text(&items[3])))
}

/// Redacts the password (or a bare secret) in a Redis URL so the URL can be logged:
/// `redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`. Everything that
/// prints a Redis URL prints this.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL (a unix socket path or garbage): nothing to show safely but its form.
        return if url.contains('@') {
            "***".to_owned()
        } else {
            url.to_owned()
        };
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let tail = match tail.find("password=") {
        Some(i) => format!("{}password=***", &tail[..i]),
        None => tail.to_owned(),
    };
    let Some(at) = authority.rfind('@') else {
        return format!("{scheme}://{authority}{tail}");
    };
    let (userinfo, host) = authority.split_at(at);
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{user}{host}{tail}")
}

/// TLS to Redis (`rediss://` URLs): the CA that signed Redis's certificate (the system's
/// roots when `None`) and, when Redis authenticates clients (`tls-auth-clients`), this
/// node's client certificate and key. PEM bytes.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// The CA certificate(s) to trust, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key, PEM.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

/// One group's stored snapshots as read: the zones whose field decodes, and the fields that
/// do not (each costs its own zone only).
#[derive(Debug, Default)]
pub struct GroupSnapshots {
    /// (zone id, payload) of every well-formed field.
    pub zones: Vec<(u64, Vec<u8>)>,
    /// Fields that are not a zone id (their payload is not looked at).
    pub bad: Vec<StoreValue>,
}

/// The fenced lease store in Redis.
#[derive(Clone)]
pub struct RedisLeaseStore {
    conn: ConnectionManager,
    prefix: String,
    ttl_ms: u64,
    /// Used as the incarnation id if this node is the first to find the store empty.
    candidate_incarnation: u64,
    scripts: [Script; 4],
    /// Quiet-period values the scripts clamped, for the node to report (see [`PROLOGUE`]).
    clamped: std::sync::Arc<std::sync::Mutex<Vec<StoreValue>>>,
}

impl std::fmt::Debug for RedisLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLeaseStore")
            .field("prefix", &self.prefix)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

/// Quiet-period clamps kept for the node to report before older ones are dropped.
const CLAMPED_KEPT_MAX: usize = 16;

impl RedisLeaseStore {
    /// Connects (reconnecting by itself later) to `url`. `candidate_incarnation` should differ
    /// between nodes and restarts (e.g. random, or node id and start time).
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl_ms: u64,
        candidate_incarnation: u64,
    ) -> Result<Self, RedisStoreError> {
        Self::connect_with(url, None, prefix, ttl_ms, candidate_incarnation).await
    }

    /// [`connect`](Self::connect), with TLS settings for a `rediss://` URL.
    pub async fn connect_with(
        url: &str,
        tls: Option<&RedisTls>,
        prefix: &str,
        ttl_ms: u64,
        candidate_incarnation: u64,
    ) -> Result<Self, RedisStoreError> {
        if url.starts_with("rediss://") {
            // rustls needs a process-wide provider: ring, the node's only one (another part
            // of the process may have installed it already).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = match tls {
            Some(t) if url.starts_with("rediss://") => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: t.client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.clone(),
                    }),
                    root_cert: t.ca_pem.clone(),
                },
            )?,
            _ => redis::Client::open(url)?,
        };
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
            clamped: std::sync::Arc::default(),
        })
    }

    /// Quiet-period values found too far ahead and clamped since the last call (each: the
    /// key and the value found). The node logs and counts them.
    pub fn take_clamped(&self) -> Vec<StoreValue> {
        std::mem::take(&mut *self.clamped.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn note_notice(&self, notice: String) {
        if notice.is_empty() {
            return;
        }
        let v = StoreValue::new(
            &format!("{}:quiet_until", self.prefix),
            "",
            notice.as_bytes(),
        );
        let mut c = self.clamped.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() < CLAMPED_KEPT_MAX {
            c.push(v);
        }
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
        let answer: redis::Value = inv.invoke_async(&mut conn).await?;
        let (status, inc, n, notice) = decode_answer(answer)?;
        self.note_notice(notice);
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

    /// A fenced snapshot write of some zones of a group by `node`: stored only if `epoch` is
    /// the group's current epoch, `node` its holder, and its lease has not lapsed. At most
    /// [`WRITE_ZONES_MAX`] zones.
    pub async fn write(
        &self,
        group: u64,
        node: NodeId,
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
            .arg(group)
            .arg(node);
        for (zone, payload) in zones.iter().take(WRITE_ZONES_MAX) {
            inv.arg(*zone).arg(payload.as_slice());
        }
        let mut conn = self.conn.clone();
        let answer: redis::Value = inv.invoke_async(&mut conn).await?;
        let (status, inc, n, notice) = decode_answer(answer)?;
        self.note_notice(notice);
        Ok((
            inc,
            if status == "ok" {
                Ok(n)
            } else {
                Err(StoreError::Stale { current: n })
            },
        ))
    }

    /// Every zone snapshot stored for a group: (zone id, payload), and the fields that are
    /// not a zone id (each costs that field only, never the group).
    pub async fn read_group(&self, group: u64) -> Result<GroupSnapshots, RedisStoreError> {
        let key = format!("{}:snap:{group}", self.prefix);
        let mut conn = self.conn.clone();
        let v: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        let mut out = GroupSnapshots::default();
        for (field, payload) in v {
            match decode_zone_field(&field) {
                Some(zone) => out.zones.push((zone, payload)),
                None => out
                    .bad
                    .push(StoreValue::new(&key, &String::from_utf8_lossy(&field), b"")),
            }
        }
        Ok(out)
    }

    /// The groups that have snapshots, and the members of the set that are not a group id.
    pub async fn groups(&self) -> Result<(Vec<u64>, Vec<StoreValue>), RedisStoreError> {
        let key = format!("{}:groups", self.prefix);
        let mut conn = self.conn.clone();
        let v: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        let (mut groups, mut bad) = (Vec::new(), Vec::new());
        for m in v {
            match decode_zone_field(&m) {
                Some(g) => groups.push(g),
                None => bad.push(StoreValue::new(&key, "", &m)),
            }
        }
        Ok((groups, bad))
    }

    /// Stale snapshot writes the store has refused since it last started empty (a value
    /// that is not a count reads as 0).
    pub async fn stale_writes(&self) -> Result<u64, RedisStoreError> {
        let mut conn = self.conn.clone();
        let n: Option<Vec<u8>> = redis::cmd("GET")
            .arg(format!("{}:incarnation:stale_writes", self.prefix))
            .query_async(&mut conn)
            .await?;
        Ok(n.and_then(|b| decode_zone_field(&b)).unwrap_or(0))
    }
}

/// A zone or group id as this cluster writes it in Redis: the canonical decimal form of a
/// `u64` (ASCII digits, at most 20, no sign, no spaces, no leading zero). Untrusted bytes:
/// anything else is `None`.
pub fn decode_zone_field(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty()
        || bytes.len() > 20
        || !bytes.iter().all(u8::is_ascii_digit)
        || (bytes.len() > 1 && bytes[0] == b'0')
    {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// A script's answer as Redis returns it, decoded (the lease scripts' reply decoder, exposed
/// for fuzzing): status, incarnation, number, clamp notice; a corrupt stored value is
/// [`RedisStoreError::Corrupt`].
pub fn decode_script_answer(
    v: redis::Value,
) -> Result<(String, u64, u64, String), RedisStoreError> {
    decode_answer(v)
}

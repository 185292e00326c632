//! Membership and failure detection: SWIM (the [`foca`] crate), sans-IO.
//!
//! [`Membership`] wraps foca with what a node needs around it: packets in and out as plain
//! bytes addressed to socket addresses (the shell carries them in QUIC datagrams), foca's
//! timers kept in a deadline queue the shell polls, and **re-announcing when isolated**: foca
//! schedules nothing once a node has no member left, so [`Membership::tick`] announces again,
//! every `announce_every_ms`, to the seeds and to every member it has ever seen (the seeds
//! may all be gone). Time and randomness are arguments; the same inputs give the same
//! outputs.
//!
//! A member's identity is its node id, its peer address, a **generation** and its ownership
//! weight. A restarted node starts with a new (higher) generation; a node that finds itself
//! declared down (it was paused or cut off) renews its identity with the next generation and
//! rejoins. Foca keys members by peer address, and the higher generation wins.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use foca::{AccumulatingRuntime, Config, Foca, NoCustomBroadcast, OwnedNotification, Timer};
use rand10::rngs::SmallRng;
use rand10::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::ownership::{Member, NodeId, View};

/// A member's identity on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// Node id (unique in the cluster, from configuration).
    pub id: NodeId,
    /// Where its peer endpoint listens.
    pub addr: SocketAddr,
    /// Where clients reach it.
    pub client: SocketAddr,
    /// Increases with each restart and each rejoin after being declared down.
    pub generation: u64,
    /// Its share of zones (ownership weight), at least 1.
    pub weight: u32,
}

impl foca::Identity for Peer {
    /// Foca keys members by peer address: a node restarted on the same address replaces its
    /// old identity (the higher generation wins), and an announce addressed to just an
    /// address (a seed, before we know its id) is accepted.
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: self.generation + 1,
            ..*self
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Failure-detection timing. The defaults detect a dead node in about 1.5–2.5 s on a LAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often a member probes another. Default 500 ms.
    pub probe_period_ms: u64,
    /// How long a probe waits for its answer before asking others to probe. Default 200 ms.
    pub probe_rtt_ms: u64,
    /// How long a suspected member has to refute before it is declared down. Default 700 ms.
    pub suspect_to_down_ms: u64,
    /// An isolated node announces itself again this often. Default 1,000 ms.
    pub announce_every_ms: u64,
    /// Largest gossip packet (must fit a QUIC datagram). Default 1,100 bytes.
    pub max_packet_bytes: usize,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            probe_period_ms: 500,
            probe_rtt_ms: 200,
            suspect_to_down_ms: 700,
            announce_every_ms: 1_000,
            max_packet_bytes: 1_100,
        }
    }
}

impl MembershipConfig {
    fn foca(&self) -> Config {
        let mut c = Config::new_lan(NonZeroU32::new(8).expect("non-zero"));
        c.probe_period = Duration::from_millis(self.probe_period_ms.max(10));
        c.probe_rtt = Duration::from_millis(
            self.probe_rtt_ms
                .clamp(5, c.probe_period.as_millis() as u64 - 1),
        );
        c.suspect_to_down_after = Duration::from_millis(self.suspect_to_down_ms.max(1));
        c.max_packet_size = NonZeroUsize::new(self.max_packet_bytes.max(512)).expect("non-zero");
        c.remove_down_after = Some(Duration::from_secs(600));
        // Heal partitions: every few seconds, announce to a random member (and to a down one).
        c.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(5),
            num_members: NonZeroUsize::new(1).expect("non-zero"),
        });
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(3),
            num_members: NonZeroUsize::new(2).expect("non-zero"),
        });
        c
    }
}

/// A change in the live member set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A member is up (or came back with a new generation).
    Up(Peer),
    /// A member was declared down, or left.
    Down(Peer),
}

/// One node's membership state machine.
pub struct Membership {
    foca: Foca<Peer, foca::PostcardCodec, SmallRng, NoCustomBroadcast>,
    rt: AccumulatingRuntime<Peer>,
    /// Pending foca timers by (deadline, sequence).
    timers: BTreeMap<(u64, u64), Timer<Peer>>,
    seq: u64,
    seeds: Vec<SocketAddr>,
    /// Every peer address ever seen, by node id.
    known: BTreeMap<NodeId, SocketAddr>,
    cfg: MembershipConfig,
    last_announce_ms: Option<u64>,
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    changes: Vec<Change>,
    left: bool,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("me", self.foca.identity())
            .field("members", &self.foca.num_members())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// A node `me` that will join through `seeds` (its own address among them is ignored).
    pub fn new(me: Peer, seeds: Vec<SocketAddr>, cfg: MembershipConfig, rng_seed: u64) -> Self {
        let foca = Foca::new(
            me,
            cfg.foca(),
            SmallRng::seed_from_u64(rng_seed),
            foca::PostcardCodec,
        );
        Self {
            foca,
            rt: AccumulatingRuntime::new(),
            timers: BTreeMap::new(),
            seq: 0,
            seeds,
            known: BTreeMap::new(),
            cfg,
            last_announce_ms: None,
            outbox: Vec::new(),
            changes: Vec::new(),
            left: false,
        }
    }

    /// This node's current identity.
    pub fn me(&self) -> Peer {
        *self.foca.identity()
    }

    /// The node id a gossip packet claims as its sender (the source identity in its header),
    /// or `None` when the header does not decode. The shell compares it with the id in the
    /// sending peer's certificate before handing the packet over: a member cannot speak for
    /// another.
    pub fn packet_sender(data: &[u8]) -> Option<NodeId> {
        use foca::Codec as _;
        let header: foca::Header<Peer> = foca::PostcardCodec.decode_header(data).ok()?;
        Some(header.src.id)
    }

    /// A packet from the network.
    pub fn handle_data(&mut self, data: &[u8], now_ms: u64) {
        // Malformed or foreign packets are dropped; foca reports why, which a peer cannot
        // use against us.
        let _ = self.foca.handle_data(data, &mut self.rt);
        self.drain(now_ms);
    }

    /// Fires every timer due at `now_ms`, and re-announces if isolated.
    pub fn tick(&mut self, now_ms: u64) {
        while let Some((&(at, s), _)) = self.timers.iter().next() {
            if at > now_ms {
                break;
            }
            if let Some(t) = self.timers.remove(&(at, s)) {
                let _ = self.foca.handle_timer(t, &mut self.rt);
                self.drain(now_ms);
            }
        }
        if self.left {
            return;
        }
        let due = self
            .last_announce_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= self.cfg.announce_every_ms);
        if self.foca.num_members() == 0 && due {
            self.last_announce_ms = Some(now_ms);
            let me = self.me();
            let mut targets: Vec<SocketAddr> = self.seeds.clone();
            targets.extend(self.known.values().copied());
            targets.sort();
            targets.dedup();
            for addr in targets.into_iter().filter(|a| *a != me.addr) {
                // Foca accepts an announce addressed to any identity with its address: a
                // placeholder with the seed's address is enough.
                let dst = Peer {
                    id: NodeId::MAX,
                    addr,
                    client: addr,
                    generation: 0,
                    weight: 1,
                };
                let _ = self.foca.announce(dst, &mut self.rt);
            }
            self.drain(now_ms);
        }
    }

    /// When [`tick`](Self::tick) next has something to do (a foca timer), node time.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.keys().next().map(|&(at, _)| at)
    }

    /// Leaves the cluster gracefully: tells the others, then stays quiet.
    pub fn leave(&mut self, now_ms: u64) {
        self.left = true;
        let _ = self.foca.leave_cluster(&mut self.rt);
        self.drain(now_ms);
    }

    /// Packets to send: (destination, bytes).
    pub fn take_outbox(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    /// Member set changes since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// The live members, this node included.
    pub fn live(&self) -> Vec<Peer> {
        let mut v: Vec<Peer> = self.foca.iter_members().map(|m| *m.id()).collect();
        if !self.left {
            v.push(self.me());
        }
        v.sort_by_key(|p| p.id);
        v
    }

    /// An ownership view over the live members.
    pub fn view(&self, group_resolution: u8) -> View {
        let mut v = View::new(group_resolution);
        for p in self.live() {
            v.upsert(Member {
                id: p.id,
                weight: p.weight,
            });
        }
        v
    }

    fn drain(&mut self, now_ms: u64) {
        while let Some((to, data)) = self.rt.to_send() {
            self.known.entry(to.id).or_insert(to.addr);
            if to.id != NodeId::MAX {
                self.known.insert(to.id, to.addr);
            }
            self.outbox.push((to.addr, data.to_vec()));
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.seq += 1;
            self.timers
                .insert((now_ms + after.as_millis() as u64, self.seq), timer);
        }
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(p) => {
                    self.known.insert(p.id, p.addr);
                    self.changes.push(Change::Up(p));
                }
                OwnedNotification::MemberDown(p) => {
                    self.changes.push(Change::Down(p));
                }
                OwnedNotification::Rename(_, p) => self.changes.push(Change::Up(p)),
                _ => {}
            }
        }
    }
}

//! Deterministic simulation of the membership core (foca) over a simulated network: loss,
//! delay, duplication, node kills and restarts (new generation), pauses past the failure
//! detector (the node finds itself declared down and rejoins), graceful leaves, partitions
//! that heal. After the faults stop, every live node must see exactly the live set, and all
//! must compute the same ownership checksum.
//!
//! `EQ_MEMBER_SEEDS=N` runs N seeds (default 200); `EQ_MEMBER_SEED=S` replays one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use cluster::membership::{Membership, MembershipConfig, Peer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const NODES: u16 = 5;
const STEP_MS: u64 = 10;

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8 + 1], 7500))
}

struct Node {
    m: Membership,
    alive: bool,
    paused_until: u64,
    left: bool,
}

struct Packet {
    at: u64,
    from: u16,
    to: u16,
    data: Vec<u8>,
}

fn run(seed: u64) -> Result<(), String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let cfg = MembershipConfig::default();
    let seeds: Vec<SocketAddr> = (0..NODES).map(addr).collect();
    let mk = |i: u16, gen: u64, rng: &mut SmallRng| {
        Membership::new(
            Peer {
                id: i,
                addr: addr(i),
                client: addr(i),
                generation: gen,
                weight: 1,
            },
            seeds.clone(),
            cfg,
            rng.random(),
        )
    };
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|i| Node {
            m: mk(i, 1, &mut rng),
            alive: true,
            paused_until: 0,
            left: false,
        })
        .collect();
    let mut net: Vec<Packet> = Vec::new();
    let mut partition: Option<(BTreeSet<u16>, u64)> = None;
    let faults_until = 20_000;
    let end = faults_until + 15_000;
    let loss = rng.random_range(0.0..0.1);
    let mut gen = 10;
    let mut now = 0;
    while now < end {
        now += STEP_MS;
        if now < faults_until && rng.random_bool(0.004) {
            let i = rng.random_range(0..NODES);
            match rng.random_range(0..5) {
                0 => nodes[i as usize].alive = false,
                1 => {
                    gen += 10;
                    nodes[i as usize] = Node {
                        m: mk(i, gen, &mut rng),
                        alive: true,
                        paused_until: 0,
                        left: false,
                    };
                }
                2 => nodes[i as usize].paused_until = now + rng.random_range(500..5_000),
                3 => {
                    let n = &mut nodes[i as usize];
                    if n.alive && !n.left && n.paused_until <= now {
                        n.m.leave(now);
                        n.left = true;
                    }
                }
                _ => {
                    let side: BTreeSet<u16> = (0..NODES).filter(|_| rng.random_bool(0.5)).collect();
                    partition = Some((side, now + rng.random_range(500..6_000)));
                }
            }
        }
        if now >= faults_until {
            // Faults stop: dead and left nodes come back as new generations, pauses end.
            for i in 0..NODES {
                let n = &mut nodes[i as usize];
                if !n.alive || n.left {
                    gen += 10;
                    *n = Node {
                        m: mk(i, gen, &mut rng),
                        alive: true,
                        paused_until: 0,
                        left: false,
                    };
                }
                n.paused_until = n.paused_until.min(now);
            }
            partition = None;
        }
        if partition.as_ref().is_some_and(|(_, until)| *until <= now) {
            partition = None;
        }
        // Deliver.
        let (due, rest): (Vec<Packet>, Vec<Packet>) = net.drain(..).partition(|p| p.at <= now);
        net = rest;
        for p in due {
            let n = &mut nodes[p.to as usize];
            if !n.alive || n.left || n.paused_until > now {
                continue;
            }
            if let Some((side, _)) = &partition {
                if side.contains(&p.from) != side.contains(&p.to) {
                    continue;
                }
            }
            n.m.handle_data(&p.data, now);
        }
        for i in 0..NODES {
            let n = &mut nodes[i as usize];
            if !n.alive || n.paused_until > now {
                continue;
            }
            n.m.tick(now);
            for (to, data) in n.m.take_outbox() {
                let Some(j) = (0..NODES).find(|&j| addr(j) == to) else {
                    continue;
                };
                if rng.random_bool(loss) {
                    continue;
                }
                let copies = if rng.random_bool(0.02) { 2 } else { 1 };
                for _ in 0..copies {
                    net.push(Packet {
                        at: now + rng.random_range(1..40),
                        from: i,
                        to: j,
                        data: data.clone(),
                    });
                }
            }
            n.m.take_changes();
        }
    }
    let expect: BTreeSet<u16> = (0..NODES).collect();
    let mut sums = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        let live: BTreeSet<u16> = n.m.live().iter().map(|p| p.id).collect();
        if live != expect {
            return Err(format!("node {i} sees {live:?}, expected {expect:?}"));
        }
        sums.insert(i, n.m.view(5).checksum());
    }
    let first = sums[&0];
    if sums.values().any(|&c| c != first) {
        return Err(format!("ownership checksums differ: {sums:?}"));
    }
    Ok(())
}

#[test]
fn membership_converges_after_faults_heal() {
    if let Some(seed) = std::env::var("EQ_MEMBER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        return;
    }
    let n: u64 = std::env::var("EQ_MEMBER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut failed = Vec::new();
    for seed in 0..n {
        if let Err(e) = run(seed) {
            eprintln!("seed {seed}: {e} (replay: EQ_MEMBER_SEED={seed})");
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {n} seeds did not converge: {failed:?}",
        failed.len()
    );
}

#[test]
fn every_gossip_packet_names_its_sender_so_the_shell_can_check_it_against_the_certificate() {
    let cfg = MembershipConfig::default();
    let seeds: Vec<SocketAddr> = (0..3).map(addr).collect();
    let mut m = Membership::new(
        Peer {
            id: 2,
            addr: addr(2),
            client: addr(2),
            generation: 1,
            weight: 1,
        },
        seeds,
        cfg,
        7,
    );
    m.tick(1_000);
    let out = m.take_outbox();
    assert!(
        !out.is_empty(),
        "an isolated node announces itself to its seeds"
    );
    for (_, data) in &out {
        assert_eq!(Membership::packet_sender(data), Some(2));
        // A cut or garbled header names no one (dropped by the shell's check or by foca).
        assert_eq!(Membership::packet_sender(&data[..3.min(data.len())]), None);
    }
    assert_eq!(Membership::packet_sender(b""), None);
}

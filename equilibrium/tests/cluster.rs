//! End-to-end cluster tests: real `equilibrium node` processes (gossip over QUIC with mutual
//! TLS), a real `redis-server` started here on a free port, real clients under load.
//!
//! Three nodes form a cluster and spread the zones; `kill -9` under load; rolling restart
//! under load; a node paused past its lease; a fourth node joins; Redis killed and
//! restarted; the admin CLI; the staleness bound. Each prints its figures (`--nocapture`
//! shows them). The scenarios run one at a time (they share the machine's two cores). The
//! harness is `support/cluster.rs`.
//!
//! Default cluster settings throughout, so the figures are those of the defaults.

#[path = "support/cluster.rs"]
mod harness;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{Client, ClusterClient};
use harness::*;
use protocol::msg::{self, outcome};
use protocol::ErrorCode;

#[test]
fn three_nodes_form_a_cluster_and_spread_the_zones() {
    let _g = lock();
    let mut c = TestCluster::start(3);
    runtime().block_on(async {
        let zones = city_zones();
        let cc = c.cluster_client(PREMIUM).await;
        seed_zones(&cc, &zones).await;
        let counts = c.settle(zones.len() as u32).await;
        for n in &c.nodes {
            let m = n.scrape();
            assert!(
                m.contains("equilibrium_cluster_members 3\n"),
                "node {}:\n{m}",
                n.id
            );
            assert!(m.contains("equilibrium_redis_up 1\n"), "node {}", n.id);
        }
        let mean = zones.len() as f64 / 3.0;
        let max = f64::from(*counts.iter().max().expect("nodes"));
        println!(
            "(a) {} zones over 3 nodes: {counts:?}, max/mean {:.2}",
            zones.len(),
            max / mean
        );
        assert!(
            max <= 1.5 * mean,
            "a node holds {max} zones, over 1.5 × the mean {mean:.0}"
        );
        // Every node answers quotes for every zone (replicated snapshots).
        every_node_quotes_every_zone(&c, &zones).await;
        // A client that learns the ownership map from one node routes each zone to the node
        // that really owns it.
        let d = ClusterClient::discover(&[c.nodes[1].addr], c.client_cfg(PREMIUM))
            .await
            .expect("discover");
        assert_eq!(d.addrs().len(), 3);
        let mut owned: Vec<Vec<u64>> = Vec::new();
        for i in 0..3 {
            owned.push(zones_on(&c, i, &zones).await);
        }
        for (i, zs) in owned.iter().enumerate() {
            for &z in zs.iter().step_by(7) {
                let owner = d.owner_of(z).expect("a route");
                assert_eq!(d.addrs()[owner], c.nodes[i].addr, "zone {z:x}");
            }
        }
        // Quotes answered from replicas count as demand at the zone's owner. The owner's
        // count decays (half-life `demand_half_life_s`, 10 s in the tests' engine), so it is
        // compared with what it held plus 60, decayed over the time since the quotes were
        // sent (rounded on both sides: one quote of slack).
        let z0 = owned[0][0];
        let other = Client::connect(c.nodes[1].addr, c.client_cfg(PREMIUM))
            .await
            .expect("client");
        let owner_admin = c.admin(0).await;
        let before = owner_admin.zone_state(z0).await.expect("state").quotes;
        let sent_at = Instant::now();
        for _ in 0..60 {
            other
                .quote(quote_req(z0))
                .await
                .expect("quote from a replica");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let q = owner_admin.zone_state(z0).await.expect("state").quotes;
            let decay = 0.5f64.powf(sent_at.elapsed().as_secs_f64() / 10.0);
            if f64::from(q) >= (f64::from(before) + 60.0) * decay - 1.0 {
                break;
            }
            if Instant::now() >= deadline {
                for n in &c.nodes {
                    eprintln!("==== node {}\n{}", n.id, n.log());
                }
                panic!("the owner counts {q} (had {before}) of 60 remote quotes in zone {z0:x}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut next = ids();
        let out = d
            .send_events(zones.iter().take(200).map(|&z| event(next(), z)).collect())
            .await
            .expect("events");
        assert!(out.iter().all(|&o| o == outcome::APPLIED));
        d.close().await;
        cc.close().await;
    });
    // A node restarted in a quiet cluster (no price changes anywhere) still gets every
    // zone's price: the others send a newcomer all of theirs.
    c.nodes[2].terminate();
    c.spawn(2);
    runtime().block_on(async {
        c.settle(city_zones().len() as u32).await;
        every_node_quotes_every_zone(&c, &city_zones()).await;
    });
}

#[test]
fn a_peer_without_the_cluster_credential_is_refused() {
    let _g = lock();
    // Two clusters with different CAs: a node of one cannot join the other.
    let mut a = TestCluster::start(1);
    let b = TestCluster::start(0);
    // Node of cluster "b"'s credential, seeded with cluster "a"'s node.
    let mut b = b;
    b.seeds = a.seeds.clone();
    let peer = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let node = b.make_node(9, peer);
    b.nodes.push(node);
    b.spawn(0);
    std::thread::sleep(Duration::from_secs(3));
    let log_a = a.nodes[0].log();
    assert!(
        log_a.contains("peer handshake refused"),
        "the foreign node was not refused:\n{log_a}"
    );
    assert!(
        !log_a.contains("members=[1, 9]"),
        "the foreign node joined:\n{log_a}"
    );
    a.nodes[0].kill9();
}

#[test]
fn kill_9_under_load_loses_no_quote_and_at_most_a_snapshot_interval_of_events() {
    let _g = lock();
    let mut c = TestCluster::start(3);
    runtime().block_on(async {
        let zones = Arc::new(city_zones());
        let cc = Arc::new(c.cluster_client(PREMIUM).await);
        seed_zones(&cc, &zones).await;
        c.settle(zones.len() as u32).await;
        let victim = 2;
        let victim_zones = zones_on(&c, victim, &zones).await;
        assert!(!victim_zones.is_empty());
        let load = Load::start(Arc::clone(&cc), Arc::clone(&zones));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let survivors = [c.admin(0).await, c.admin(1).await];
        let mut groups_total = 0;
        for i in 0..3 {
            groups_total += c.admin(i).await.cluster().await.expect("cluster state").groups_served;
        }
        let killed_at = Instant::now();
        c.nodes[victim].kill9();
        // From the survivors' admin state, polled on its own: when did each drop the dead
        // node from its view (failure detected), and when did they serve every group
        // between them (its last group restored)?
        let watch = tokio::spawn(async move {
            let mut detected: [Option<u128>; 2] = [None, None];
            let mut restored_ms = None;
            let deadline = Instant::now() + Duration::from_secs(20);
            while (detected.contains(&None) || restored_ms.is_none()) && Instant::now() < deadline
            {
                let mut served = 0;
                for (i, s) in survivors.iter().enumerate() {
                    if let Ok(cs) = s.cluster().await {
                        served += cs.groups_served;
                        if detected[i].is_none() && cs.members.len() == 2 {
                            detected[i] = Some(killed_at.elapsed().as_millis());
                        }
                    }
                }
                if restored_ms.is_none() && served >= groups_total {
                    restored_ms = Some(killed_at.elapsed().as_millis());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (detected, restored_ms)
        });
        // Probe: when does every zone of the dead node accept events again?
        let survivor = c.admin(0).await;
        let mut next = ids();
        until_each_zone_applies(
            &victim_zones,
            &mut next,
            Duration::from_millis(20),
            Duration::from_secs(20),
            "still not served",
            async |evs| survivor.send_events(evs).await,
        )
        .await;
        let takeover_ms = killed_at.elapsed().as_millis();
        let (detected, restored_ms) = watch.await.expect("admin watch");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (quotes, failed, acked, unacked) = load.stop().await;
        let detect: Vec<u128> = detected.into_iter().flatten().collect();
        let lost = lost_events(&cc, &acked).await;
        let oldest_lost = lost.iter().map(|(_, t)| killed_at.saturating_duration_since(*t)).max();
        println!(
            "(b) kill -9 node 3 ({} zones): failure detected after {detect:?} ms; its last group restored {restored_ms:?} ms and all its zones seen accepting events by the probe {takeover_ms} ms after the kill; \
             quotes {quotes} ok, {} failed; events acked {}, lost {} (acked at most {:?} before the kill), not acked {unacked}",
            victim_zones.len(),
            failed.len(),
            acked.len(),
            lost.len(),
            oldest_lost
        );
        assert!(failed.is_empty(), "failed quotes: {:?}", &failed[..failed.len().min(5)]);
        assert_eq!(detect.len(), 2, "a survivor never dropped the dead node from its view");
        // Lost events were acknowledged by the dead node within one snapshot interval (1 s)
        // before the kill, plus the flush's own duration.
        if let Some(d) = oldest_lost {
            assert!(d <= Duration::from_millis(1_500), "an event acked {d:?} before the kill was lost");
        }
        cc.close().await;
    });
}

#[test]
fn rolling_restart_loses_no_quote_event_or_fare_change() {
    let _g = lock();
    let mut c = TestCluster::start(3);
    let rt = runtime();
    let zones = Arc::new(city_zones());
    let cc = Arc::new(rt.block_on(c.cluster_client(PREMIUM)));
    let admin = Arc::new(rt.block_on(c.cluster_client(ADMIN)));
    rt.block_on(async {
        seed_zones(&cc, &zones).await;
        c.settle(zones.len() as u32).await;
    });
    let load = rt.block_on(async { Load::start(Arc::clone(&cc), Arc::clone(&zones)) });
    // Fare changes all along, through any node, retried until acknowledged.
    let fares_stop = Arc::new(AtomicBool::new(false));
    let fare_log: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let fare_task = {
        let (admin, stop, log, zones) = (
            Arc::clone(&admin),
            Arc::clone(&fares_stop),
            Arc::clone(&fare_log),
            Arc::clone(&zones),
        );
        rt.spawn(async move {
            let mut version = 10;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 29) % zones.len();
                let z = zones[i];
                version += 1;
                let fare = msg::WireFare {
                    version,
                    base_minor: 300,
                    per_km_minor: 100 + version,
                    per_min_minor: 20,
                    minimum_minor: 500,
                    surge_cap_milli: 3_000,
                    currency: *b"EUR",
                };
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    match admin
                        .call(|c| async move { c.fare_set(z, fare).await })
                        .await
                    {
                        Ok(v) => {
                            log.lock().expect("lock").push((z, v));
                            break;
                        }
                        Err(e)
                            if Instant::now() < deadline
                                && e.code() != Some(ErrorCode::Conflict) =>
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("fare change for {z:x} v{version} failed: {e}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = Instant::now();
    for i in 0..3 {
        c.nodes[i].terminate();
        c.spawn(i);
        rt.block_on(c.settle(zones.len() as u32));
    }
    let restart_s = started.elapsed().as_secs_f64();
    rt.block_on(async {
        // Restarted nodes price every zone again, steady ones included.
        every_node_quotes_every_zone(&c, &zones).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        fares_stop.store(true, Ordering::Relaxed);
        fare_task.await.expect("fare task");
        let (quotes, failed, acked, unacked) = load.stop().await;
        let lost = lost_events(&cc, &acked).await;
        // Every acknowledged fare change is in force, as seen from every node.
        let mut last: std::collections::BTreeMap<u64, u32> = Default::default();
        for &(z, v) in fare_log.lock().expect("lock").iter() {
            last.insert(z, v);
        }
        let mut lost_fares = 0;
        for (i, _) in c.nodes.iter().enumerate() {
            let a = c.admin(i).await;
            for (&z, &v) in &last {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let got = a.fare_get(z).await.map(|f| f.version).unwrap_or(0);
                    if got == v {
                        break;
                    }
                    if Instant::now() > deadline {
                        lost_fares += 1;
                        eprintln!("node {}: zone {z:x} fare version {got}, acknowledged {v}", i + 1);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        println!(
            "(c) rolling restart of 3 nodes in {restart_s:.1} s: quotes {quotes} ok, {} failed; events acked {}, lost {}, not acked {unacked}; \
             fare changes acked {}, lost {lost_fares}",
            failed.len(),
            acked.len(),
            lost.len(),
            fare_log.lock().expect("lock").len()
        );
        assert!(failed.is_empty(), "failed quotes: {:?}", &failed[..failed.len().min(5)]);
        assert!(lost.is_empty(), "{} acknowledged events lost", lost.len());
        assert_eq!(lost_fares, 0, "acknowledged fare changes lost");
        assert!(!last.is_empty());
    });
}

#[test]
fn a_paused_node_is_fenced_off_and_serves_no_events_for_zones_it_lost() {
    let _g = lock();
    let c = TestCluster::start(3);
    runtime().block_on(async {
        let zones = Arc::new(city_zones());
        let cc = Arc::new(c.cluster_client(PREMIUM).await);
        seed_zones(&cc, &zones).await;
        c.settle(zones.len() as u32).await;
        let victim = 0;
        let its_zones = zones_on(&c, victim, &zones).await;
        let direct = Client::connect(c.nodes[victim].addr, c.client_cfg(PREMIUM)).await.expect("client");
        let load = Load::start(Arc::clone(&cc), Arc::clone(&zones));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let paused_at = Instant::now();
        c.nodes[victim].signal("-STOP");
        // Past failure detection and the lease (2 s): the others take its zones over.
        tokio::time::sleep(Duration::from_secs(6)).await;
        c.nodes[victim].signal("-CONT");
        let resumed_at = Instant::now();
        // Straight after resuming, events sent to it for its old zones must not be applied
        // on its stale state: each is forwarded to the new owner or answered not serving.
        let mut next = ids();
        let evs: Vec<msg::WireEvent> = its_zones.iter().take(50).map(|&z| event(next(), z)).collect();
        // (The client may need to reconnect first: its connection idled out during the pause.)
        let deadline = Instant::now() + Duration::from_secs(5);
        let out = loop {
            match direct.send_events(evs.clone()).await {
                Ok(out) => break out,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("retrying the direct events: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("node 1 did not answer after resuming: {e}"),
            }
        };
        assert_eq!(out.len(), evs.len());
        tokio::time::sleep(Duration::from_secs(6)).await;
        let (quotes, failed, mut acked, _) = load.stop().await;
        let now = Instant::now();
        for (e, o) in evs.iter().zip(&out) {
            if *o == outcome::APPLIED || *o == outcome::DUPLICATE {
                acked.push((*e, now));
            }
        }
        let lost = lost_events(&cc, &acked).await;
        let stale = c.redis.get("eq:incarnation:stale_writes");
        let log = c.nodes[victim].log();
        let fenced_in_log = log.matches("fenced off").count();
        let scraped = c.nodes[victim].scrape();
        let fenced_metric: u64 = scraped
            .lines()
            .find_map(|l| l.strip_prefix("equilibrium_cluster_fencing_rejections_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert_eq!(
            fenced_metric, fenced_in_log as u64,
            "the fencing metric disagrees with the log"
        );
        println!(
            "(d) node 1 paused 6 s: after resuming, {} of {} direct events acknowledged (forwarded), the rest not serving; \
             stale snapshot writes rejected by Redis: {stale}; fencing rejections logged by node 1: {fenced_in_log}; \
             quotes {quotes} ok, {} failed; events acked {}, lost {}",
            out.iter().filter(|&&o| o == outcome::APPLIED).count(),
            evs.len(),
            failed.len(),
            acked.len(),
            lost.len()
        );
        // Applied (by the new owner, forwarded), a duplicate (a retried request that had
        // landed), or not served: never refused for another reason.
        assert!(
            out.iter().all(|&o| matches!(
                o,
                outcome::APPLIED | outcome::DUPLICATE | outcome::NOT_SERVING
            )),
            "{out:?}"
        );
        assert!(stale.parse::<u64>().unwrap_or(0) >= 1, "no stale write was rejected (counter {stale:?})");
        assert!(fenced_in_log >= 1, "node 1 did not log a fenced-off write");
        // As with a kill: only what node 1 acknowledged in its last snapshot interval before
        // the pause can be lost, and nothing it acknowledged after resuming (it applied no
        // event to the state it had lost).
        for (e, t) in &lost {
            assert!(*t < resumed_at, "event {} acknowledged after the resume was lost", e.id);
            let before = paused_at.saturating_duration_since(*t);
            assert!(
                before <= Duration::from_millis(1_500),
                "event {} acknowledged {before:?} before the pause was lost",
                e.id
            );
        }
        assert!(failed.is_empty(), "failed quotes: {:?}", &failed[..failed.len().min(5)]);
    });
}

#[test]
fn a_fourth_node_takes_about_a_quarter_of_the_zones() {
    let _g = lock();
    let mut c = TestCluster::start(3);
    runtime().block_on(async {
        let zones = Arc::new(city_zones());
        let cc = Arc::new(c.cluster_client(PREMIUM).await);
        seed_zones(&cc, &zones).await;
        let before = c.settle(zones.len() as u32).await;
        let load = Load::start(Arc::clone(&cc), Arc::clone(&zones));
        let joined_at = Instant::now();
        c.add_node();
        let after = c.settle(zones.len() as u32).await;
        let took = joined_at.elapsed().as_millis();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (quotes, failed, acked, _) = load.stop().await;
        let lost = lost_events(&cc, &acked).await;
        let moved = after[3];
        let share = f64::from(moved) / zones.len() as f64;
        println!(
            "(e) a 4th node joined: {moved} of {} zones moved ({:.1}%) in {took} ms; before {before:?}, after {after:?}; \
             quotes {quotes} ok, {} failed; events lost {}",
            zones.len(),
            share * 100.0,
            failed.len(),
            lost.len()
        );
        assert!((0.12..=0.40).contains(&share), "the new node took {share:.2} of the zones");
        for i in 0..3 {
            assert!(after[i] <= before[i], "node {} gained zones on a join", i + 1);
        }
        assert!(lost.is_empty());
        assert!(failed.is_empty(), "failed quotes: {:?}", &failed[..failed.len().min(5)]);
    });
}

#[test]
fn redis_down_quotes_flow_durable_writes_fail_clearly_then_recover() {
    let _g = lock();
    let mut c = TestCluster::start(3);
    runtime().block_on(async {
        let zones = Arc::new(city_zones());
        let cc = Arc::new(c.cluster_client(PREMIUM).await);
        let admin = c.cluster_client(ADMIN).await;
        seed_zones(&cc, &zones).await;
        c.settle(zones.len() as u32).await;
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let q = {
            let (cc, zones, stop, ok, failed) = (Arc::clone(&cc), Arc::clone(&zones), Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i = (i + 13) % zones.len();
                    match cc.quote(quote_req(zones[i])).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        let zone = zones[0];
        let fare = |version| msg::WireFare {
            version,
            base_minor: 300,
            per_km_minor: 150,
            per_min_minor: 20,
            minimum_minor: 500,
            surge_cap_milli: 3_000,
            currency: *b"EUR",
        };
        c.redis.kill();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let down = admin.call(|c| async move { c.fare_set(zone, fare(50)).await }).await;
        let code = down.as_ref().err().and_then(|e| e.code());
        println!("(f) fare change while Redis is down: {down:?}");
        assert!(
            matches!(code, Some(ErrorCode::StoreUnavailable)),
            "expected store_unavailable, got {down:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let restarted = Instant::now();
        c.redis.spawn();
        // Durable writes succeed again once the nodes have reconnected and re-taken leases.
        let deadline = Instant::now() + Duration::from_secs(20);
        let v = loop {
            match admin.call(|c| async move { c.fare_set(zone, fare(51)).await }).await {
                Ok(v) => break v,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("durable writes did not recover: {e}"),
            }
        };
        let recovered_ms = restarted.elapsed().as_millis();
        assert_eq!(v, 51);
        // And events are served again.
        let mut next = ids();
        let out = cc.send_events(zones.iter().take(100).map(|&z| event(next(), z)).collect()).await.expect("events");
        assert!(out.iter().all(|&o| o == outcome::APPLIED));
        stop.store(true, Ordering::Relaxed);
        q.await.expect("quotes");
        println!(
            "(f) Redis killed for 5 s and restarted empty: quotes {} ok, {} failed; fare changes refused while down \
             (store_unavailable), accepted again {recovered_ms} ms after the restart",
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed)
        );
        assert_eq!(failed.load(Ordering::Relaxed), 0);
    });
}

// ---------------------------------------------------------------------------------------
// The admin CLI against a real cluster (issue 6).

#[test]
fn admin_cli_ownership_fares_and_drain_match_the_cluster() {
    let _g = lock();
    let mut c = TestCluster::start(3);
    let rt = runtime();
    let zones = Arc::new(city_zones());
    let cc = Arc::new(rt.block_on(c.cluster_client(PREMIUM)));
    rt.block_on(async {
        seed_zones(&cc, &zones).await;
        c.settle(zones.len() as u32).await;
        // Replicas everywhere before comparing views.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    });

    // `zones`: per-node counts sum to the zone count, and match every node's own view.
    let z = c.cli_json(0, &["zones"]);
    assert_eq!(z["total_zones_owned"], zones.len() as u64, "{z}");
    let nodes = z["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        let id = n["node_id"].as_u64().expect("id").to_string();
        for other in nodes {
            assert_eq!(
                other["view_owners"][&id], n["zones_owned"],
                "node {}'s view of node {id} differs from what node {id} owns: {z}",
                other["node_id"]
            );
        }
        assert_eq!(n["view_checksum"], nodes[0]["view_checksum"]);
    }
    let s = c.cli_json(1, &["status"]);
    assert_eq!(s["views_agree"], true, "{s}");
    assert_eq!(s["nodes"].as_array().map(Vec::len), Some(3));
    let m = c.cli_json(2, &["members"]);
    assert_eq!(m["members"].as_array().map(Vec::len), Some(3), "{m}");

    // `fare set` through one node: visible from every node, and after the owner restarts.
    let zone = format!("{:x}", zones[5]);
    let set = c.cli_json(
        0,
        &["fare", "set", &zone, "--version", "40", "--per-km", "177"],
    );
    assert_eq!(set["version"], 40, "{set}");
    let see_everywhere = |c: &TestCluster| {
        for i in 0..c.nodes.len() {
            if c.nodes[i].child.is_none() {
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let f = c.cli_json(i, &["fare", "get", &zone]);
                if f["version"] == 40 && f["per_km_minor"] == 177 {
                    break;
                }
                assert!(Instant::now() < deadline, "node {} shows {f}", i + 1);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    see_everywhere(&c);
    let owner = (0..3)
        .find(|&i| c.cli(i, &["zone", &zone, "--json"]).0 == 0)
        .expect("an owner");
    c.nodes[owner].terminate();
    c.spawn(owner);
    rt.block_on(c.settle(zones.len() as u32));
    see_everywhere(&c);

    // `policy set` through one node: stored in Redis first, then in force on every node.
    let before = c.cli_json(0, &["policy", "get"])["version"]
        .as_u64()
        .expect("version");
    let set = c.cli_json(0, &["policy", "set", "--cap", "2.5"]);
    assert_eq!(set["version"].as_u64(), Some(before + 1), "{set}");
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let p = c.cli_json(i, &["policy", "get"]);
            if p["version"].as_u64() == Some(before + 1) {
                break;
            }
            assert!(Instant::now() < deadline, "node {} still has {p}", i + 1);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // A drain needs node 2 in node 1's view: after the restart above its new incarnation may
    // own zones (from the leases) a moment before every view has it back. Wait for all
    // three views to agree (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let z = c.cli_json(0, &["zones"]);
        let nodes = z["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.len() == 3
            && nodes
                .iter()
                .all(|n| n["view_checksum"] == nodes[0]["view_checksum"])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the views never agreed on 3 nodes: {z}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // `drain`: under quote load, no quote fails and the drained node ends with no zone.
    let load = rt.block_on(async { Load::start(Arc::clone(&cc), Arc::clone(&zones)) });
    std::thread::sleep(Duration::from_secs(1));
    let d = c.cli_json(0, &["drain", "2"]);
    assert_eq!(d["groups_left"], 0, "{d}");
    assert!(d["groups_handed_over"].as_u64().unwrap_or(0) > 0, "{d}");
    // The drained node stops by itself.
    let mut child = c.nodes[1].child.take().expect("node 2");
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "the drained node did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let counts = rt.block_on(c.settle(zones.len() as u32));
    std::thread::sleep(Duration::from_secs(1));
    let (quotes, failed, acked, _) = rt.block_on(load.stop());
    let lost = rt.block_on(lost_events(&cc, &acked));
    println!(
        "(g) drain node 2: {} groups handed over; zones now {counts:?}; quotes {quotes} ok, {} failed; events lost {}",
        d["groups_handed_over"],
        failed.len(),
        lost.len()
    );
    assert_eq!(counts[1], 0);
    assert!(
        failed.is_empty(),
        "failed quotes: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(lost.is_empty());
}

#[test]
fn no_node_quotes_from_a_snapshot_older_than_the_bound() {
    let _g = lock();
    // A short bound, to see it (1.5 s), and slow failure detection, so that the paused
    // owner's zones are not taken over (and priced afresh) while the test looks.
    let c = TestCluster::start_with(2, "snapshot_stale_ms = 1500\nsuspect_to_down_ms = 10000");
    runtime().block_on(async {
        let zones = city_zones();
        let cc = c.cluster_client(PREMIUM).await;
        seed_zones(&cc, &zones).await;
        c.settle(zones.len() as u32).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let owned_by_1 = zones_on(&c, 0, &zones).await;
        let owned_by_2 = zones_on(&c, 1, &zones).await;
        let both: Vec<&u64> = owned_by_1
            .iter()
            .filter(|z| owned_by_2.contains(z))
            .collect();
        assert!(both.is_empty(), "{} zones live on both nodes", both.len());
        let z = owned_by_1[0];
        let reader = Client::connect(c.nodes[1].addr, c.client_cfg(PREMIUM))
            .await
            .expect("client");
        let fresh = reader.quote(quote_req(z)).await.expect("a fresh replica");
        assert!(fresh.snapshot_age_ms <= 1_500, "{}", fresh.snapshot_age_ms);
        // The owner stops refreshing its replicas: past the bound, node 2 answers `stale`.
        c.nodes[0].signal("-STOP");
        tokio::time::sleep(Duration::from_millis(1_800)).await;
        let err = reader.quote(quote_req(z)).await.expect_err("stale");
        c.nodes[0].signal("-CONT");
        assert_eq!(err.code(), Some(ErrorCode::Stale), "{err}");
        println!(
            "(h) a replica {} ms old was refused: {err}",
            fresh.snapshot_age_ms
        );
        reader.close().await;
        cc.close().await;
    });
}

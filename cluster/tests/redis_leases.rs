//! The lease rules run by a real `redis-server` (started here on a free port, stopped after):
//! grants, fencing, expiry, and a store restarted empty. The test command installs
//! redis-server when missing; without it this test fails with a clear message.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster::lease::StoreError;
use cluster::redis_store::RedisLeaseStore;

const TTL_MS: u64 = 400;

struct RedisServer {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl RedisServer {
    fn start_on(port: u16, dir: &std::path::Path) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is required (scripts/test.sh installs it: apt-get install redis-server)");
        // Wait (bounded) until it accepts connections.
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let dir = std::env::temp_dir().join(format!("eq-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        Self::start_on(port, &dir)
    }

    /// Kills the server and starts an empty one on the same port.
    fn restart_empty(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        let dir = self.dir.clone();
        *self = Self::start_on(port, &dir);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test]
async fn redis_grants_fences_expires_and_survives_a_restart_without_reusing_epochs() {
    let mut redis = RedisServer::start();
    let a = RedisLeaseStore::connect(&redis.url(), "eqtest", TTL_MS, 111)
        .await
        .expect("connects");
    let b = RedisLeaseStore::connect(&redis.url(), "eqtest", TTL_MS, 222)
        .await
        .expect("connects");

    // A store found empty grants nothing for a lease length.
    let (inc, r) = a.acquire(7, 1, 0).await.expect("redis");
    assert_eq!((inc, r), (111, Err(StoreError::Recovering)));
    sleep_ms(TTL_MS + 50).await;

    let (_, r) = a.acquire(7, 1, 0).await.expect("redis");
    let e1 = r.expect("granted");
    assert_eq!(
        b.acquire(7, 2, 0).await.expect("redis").1,
        Err(StoreError::Held { holder: 1 })
    );
    assert_eq!(
        a.write(7, 1, e1, &[(1, b"snapshot-1".to_vec())])
            .await
            .expect("redis")
            .1,
        Ok(e1)
    );
    assert_eq!(a.renew(7, 1, e1).await.expect("redis").1, Ok(e1));

    // Node 1 stops renewing; after the lease lapses node 2 takes over with a higher epoch.
    sleep_ms(TTL_MS + 50).await;
    let e2 = b.acquire(7, 2, 0).await.expect("redis").1.expect("granted");
    assert!(e2 > e1);
    // Node 1's late writes and renewals are fenced off.
    assert_eq!(
        a.write(7, 1, e1, &[(1, b"late".to_vec())])
            .await
            .expect("redis")
            .1,
        Err(StoreError::Stale { current: e2 })
    );
    assert_eq!(
        a.renew(7, 1, e1).await.expect("redis").1,
        Err(StoreError::Stale { current: e2 })
    );
    // The current epoch from a node that does not hold it is fenced off too.
    assert_eq!(
        a.write(7, 1, e2, &[(1, b"not-the-holder".to_vec())])
            .await
            .expect("redis")
            .1,
        Err(StoreError::Stale { current: e2 })
    );
    assert_eq!(
        b.write(7, 2, e2, &[(1, b"snapshot-2".to_vec())])
            .await
            .expect("redis")
            .1,
        Ok(e2)
    );
    assert_eq!(a.stale_writes().await.expect("redis"), 2);
    // The fenced-off write left the newer holder's snapshot in place.
    let stored = b.read_group(7).await.expect("redis");
    assert_eq!(stored.zones, vec![(1, b"snapshot-2".to_vec())]);
    assert!(stored.bad.is_empty());
    assert_eq!(b.groups().await.expect("redis"), (vec![7], vec![]));

    // Redis restarts empty: detected, quiet for a lease length, and no epoch is reused.
    redis.restart_empty();
    let mut answer = None;
    for _ in 0..50 {
        // The connection manager reconnects by itself; the first attempts may fail.
        if let Ok(ans) = b.acquire(7, 2, e2).await {
            answer = Some(ans);
            break;
        }
        sleep_ms(20).await;
    }
    let (inc, r) = answer.expect("reconnected");
    assert_eq!(
        (inc, r),
        (222, Err(StoreError::Recovering)),
        "a new incarnation, and nothing granted yet"
    );
    sleep_ms(TTL_MS + 50).await;
    let e3 = b
        .acquire(7, 2, e2)
        .await
        .expect("redis")
        .1
        .expect("granted");
    assert!(e3 > e2, "epoch {e3} reused after the restart (had {e2})");
}

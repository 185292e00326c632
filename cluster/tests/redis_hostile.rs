//! Bad bytes in Redis and a Redis that asks for credentials, against a real `redis-server`
//! (started here on a free port, stopped after): a bad snapshot field costs that field only;
//! a garbage epoch, incarnation or quiet period is answered as a bad value naming its key (not
//! as Redis being down); a far-future quiet period is clamped to one lease length; TLS
//! (`rediss://`, a certificate generated here, client certificates required) and AUTH with an
//! ACL user work, and a wrong password's error does not show it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster::lease::StoreError;
use cluster::redis_store::{redact_url, RedisLeaseStore, RedisStoreError, RedisTls};

const TTL_MS: u64 = 300;

struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
}

impl RedisServer {
    /// `redis-server` on a free port with `extra` arguments; `tls`: the port is its TLS port
    /// and the plain port is off.
    fn start(extra: &[&str], tls: bool) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("eq-redis-h-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut cmd = Command::new("redis-server");
        if tls {
            cmd.args(["--port", "0", "--tls-port", &port.to_string()]);
        } else {
            cmd.args(["--port", &port.to_string()]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is required (scripts/test.sh installs it: apt-get install redis-server)");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, port, dir }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A plain command connection for setting up bad values.
    async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

async fn cmd(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    let _: redis::Value = c.query_async(conn).await.expect("command");
}

/// A store past its first quiet period, holding group `group`'s lease at the returned epoch.
async fn store_holding(redis: &RedisServer, prefix: &str, group: u64) -> (RedisLeaseStore, u64) {
    let s = RedisLeaseStore::connect(&redis.url(), prefix, TTL_MS, 7)
        .await
        .expect("connects");
    assert_eq!(
        s.acquire(group, 1, 0).await.expect("redis").1,
        Err(StoreError::Recovering)
    );
    sleep_ms(TTL_MS + 50).await;
    let epoch = s
        .acquire(group, 1, 0)
        .await
        .expect("redis")
        .1
        .expect("granted");
    (s, epoch)
}

fn corrupt(r: Result<cluster::redis_store::Answer, RedisStoreError>) -> (String, String) {
    match r {
        Err(RedisStoreError::Corrupt(v)) => (v.key, v.field),
        other => panic!("expected a bad-value answer, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_field_in_a_groups_snapshot_hash_costs_that_field_only() {
    let redis = RedisServer::start(&[], false);
    let (s, epoch) = store_holding(&redis, "h1", 9).await;
    let zones = [(11u64, b"zone-11".to_vec()), (12, b"zone-12".to_vec())];
    assert_eq!(
        s.write(9, 1, epoch, &zones).await.expect("redis").1,
        Ok(epoch)
    );
    let mut raw = redis.raw().await;
    cmd(&mut raw, &["HSET", "h1:snap:9", "not-a-zone", "x"]).await;
    cmd(&mut raw, &["HSET", "h1:snap:9", "-13", "x"]).await;
    cmd(&mut raw, &["SADD", "h1:groups", "garbage"]).await;
    let mut got = s.read_group(9).await.expect("the group reads");
    got.zones.sort();
    assert_eq!(got.zones, zones.to_vec(), "the good zones are all there");
    let mut bad: Vec<(String, String)> = got.bad.into_iter().map(|v| (v.key, v.field)).collect();
    bad.sort();
    assert_eq!(
        bad,
        [
            ("h1:snap:9".to_owned(), "-13".to_owned()),
            ("h1:snap:9".to_owned(), "not-a-zone".to_owned())
        ]
    );
    let (groups, bad) = s.groups().await.expect("groups");
    assert_eq!(groups, vec![9]);
    assert_eq!(bad.len(), 1);
    assert_eq!(
        (bad[0].key.as_str(), bad[0].value.as_str()),
        ("h1:groups", "garbage")
    );
}

#[tokio::test]
async fn a_garbage_epoch_is_answered_as_a_bad_value_naming_the_lease_key_and_nothing_changes() {
    let redis = RedisServer::start(&[], false);
    let (s, epoch) = store_holding(&redis, "h2", 5).await;
    let mut raw = redis.raw().await;
    cmd(&mut raw, &["HSET", "h2:lease:5", "epoch", "12abc"]).await;
    let want = ("h2:lease:5".to_owned(), "epoch".to_owned());
    assert_eq!(corrupt(s.renew(5, 1, epoch).await), want);
    assert_eq!(corrupt(s.acquire(5, 2, 0).await), want);
    assert_eq!(
        corrupt(s.write(5, 1, epoch, &[(1, b"x".to_vec())]).await),
        want
    );
    assert_eq!(corrupt(s.release(5, 1, epoch).await), want);
    cmd(
        &mut raw,
        &[
            "HSET",
            "h2:lease:5",
            "epoch",
            &epoch.to_string(),
            "expires",
            "soon",
        ],
    )
    .await;
    let want = ("h2:lease:5".to_owned(), "expires".to_owned());
    assert_eq!(corrupt(s.renew(5, 1, epoch).await), want);
    let stored: Option<String> = redis::cmd("HGET")
        .arg("h2:lease:5")
        .arg("expires")
        .query_async(&mut raw)
        .await
        .expect("hget");
    assert_eq!(
        stored.as_deref(),
        Some("soon"),
        "a bad answer changes nothing"
    );
    // Other groups are not affected by one group's bad lease.
    assert!(s.acquire(6, 1, 0).await.expect("redis").1.is_ok());
    // Repaired, it works again.
    cmd(&mut raw, &["DEL", "h2:lease:5"]).await;
    assert!(
        s.acquire(5, 1, epoch)
            .await
            .expect("redis")
            .1
            .expect("granted")
            > epoch
    );
}

#[tokio::test]
async fn a_garbage_incarnation_is_answered_as_a_bad_value_naming_its_key() {
    let redis = RedisServer::start(&[], false);
    let (s, _) = store_holding(&redis, "h3", 5).await;
    let mut raw = redis.raw().await;
    cmd(&mut raw, &["SET", "h3:incarnation", "écho"]).await;
    for group in [5, 6] {
        let (key, field) = corrupt(s.acquire(group, 1, 0).await);
        assert_eq!((key.as_str(), field.as_str()), ("h3:incarnation", ""));
    }
    cmd(&mut raw, &["SET", "h3:incarnation", "77"]).await;
    cmd(&mut raw, &["SET", "h3:quiet_until", "tomorrow"]).await;
    let (key, _) = corrupt(s.acquire(6, 1, 0).await);
    assert_eq!(key, "h3:quiet_until");
}

#[tokio::test]
async fn a_far_future_quiet_period_is_clamped_to_one_lease_length_and_reported() {
    let redis = RedisServer::start(&[], false);
    let (s, _) = store_holding(&redis, "h4", 5).await;
    let mut raw = redis.raw().await;
    // The year 2286.
    cmd(&mut raw, &["SET", "h4:quiet_until", "9999999999999"]).await;
    assert_eq!(
        s.acquire(6, 1, 0).await.expect("redis").1,
        Err(StoreError::Recovering)
    );
    let clamped = s.take_clamped();
    assert_eq!(clamped.len(), 1, "{clamped:?}");
    assert_eq!(
        (clamped[0].key.as_str(), clamped[0].value.as_str()),
        ("h4:quiet_until", "9999999999999")
    );
    assert!(s.take_clamped().is_empty(), "reported once");
    sleep_ms(TTL_MS + 50).await;
    assert!(
        s.acquire(6, 1, 0).await.expect("redis").1.is_ok(),
        "granted again one lease length later"
    );
}

#[tokio::test]
async fn auth_with_an_acl_user_works_and_a_wrong_password_is_not_shown() {
    let redis = RedisServer::start(
        &[
            "--user",
            "default",
            "off",
            "--user",
            "eqnode",
            "on",
            ">s3cret-pw",
            "~*",
            "&*",
            "+@all",
        ],
        false,
    );
    let url = format!("redis://eqnode:s3cret-pw@127.0.0.1:{}/", redis.port);
    let s = RedisLeaseStore::connect(&url, "h5", TTL_MS, 1)
        .await
        .expect("the ACL user connects");
    assert_eq!(
        s.acquire(1, 1, 0).await.expect("redis").1,
        Err(StoreError::Recovering)
    );
    assert_eq!(
        redact_url(&url),
        format!("redis://eqnode:***@127.0.0.1:{}/", redis.port)
    );
    let wrong = format!("redis://eqnode:not-the-pw@127.0.0.1:{}/", redis.port);
    let e = RedisLeaseStore::connect(&wrong, "h5", TTL_MS, 1)
        .await
        .expect_err("wrong password");
    assert!(!e.to_string().contains("not-the-pw"), "{e}");
    // Without credentials: the default user is off.
    let anonymous = RedisLeaseStore::connect(&redis.url(), "h5", TTL_MS, 1).await;
    assert!(match anonymous {
        Ok(s) => s.acquire(1, 1, 0).await.is_err(),
        Err(_) => true,
    });
}

struct Pki {
    dir: PathBuf,
    tls: RedisTls,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, written for
/// redis-server and read back for the client.
fn pki(dir: &Path) -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test redis CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let leaf = |names: Vec<String>, eku| {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(names).expect("params");
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = leaf(
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = leaf(
        vec!["eq-node".to_owned()],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
    std::fs::write(dir.join("server.pem"), &server).expect("write");
    std::fs::write(dir.join("server-key.pem"), &server_key).expect("write");
    Pki {
        dir: dir.to_owned(),
        tls: RedisTls {
            ca_pem: Some(ca_cert.pem().into_bytes()),
            client: Some((client.into_bytes(), client_key.into_bytes())),
        },
    }
}

#[tokio::test]
async fn leases_work_over_tls_with_a_generated_certificate_and_client_certificates() {
    let dir = std::env::temp_dir().join(format!("eq-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pki = pki(&dir);
    let p = |f: &str| pki.dir.join(f).display().to_string();
    let (cert, key, ca) = (p("server.pem"), p("server-key.pem"), p("ca.pem"));
    let redis = RedisServer::start(
        &[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
        ],
        true,
    );
    let url = format!("rediss://127.0.0.1:{}/", redis.port);
    let s = RedisLeaseStore::connect_with(&url, Some(&pki.tls), "h6", TTL_MS, 3)
        .await
        .expect("connects over TLS");
    assert_eq!(
        s.acquire(1, 1, 0).await.expect("redis").1,
        Err(StoreError::Recovering)
    );
    sleep_ms(TTL_MS + 50).await;
    let epoch = s.acquire(1, 1, 0).await.expect("redis").1.expect("granted");
    assert_eq!(
        s.write(1, 1, epoch, &[(3, b"z".to_vec())])
            .await
            .expect("redis")
            .1,
        Ok(epoch)
    );
    assert_eq!(
        s.read_group(1).await.expect("redis").zones,
        vec![(3, b"z".to_vec())]
    );
    // Without the client certificate Redis refuses the handshake.
    let no_client = RedisTls {
        client: None,
        ..pki.tls.clone()
    };
    let refused = RedisLeaseStore::connect_with(&url, Some(&no_client), "h6", TTL_MS, 3).await;
    let worked = match refused {
        Ok(s) => s.acquire(1, 1, 0).await.is_ok(),
        Err(_) => false,
    };
    assert!(!worked, "a client without a certificate was served");
    // Plain text to the TLS port does not work either.
    let plain = format!("redis://127.0.0.1:{}/", redis.port);
    let plain = RedisLeaseStore::connect(&plain, "h6", TTL_MS, 3).await;
    assert!(match plain {
        Ok(s) => s.acquire(1, 1, 0).await.is_err(),
        Err(_) => true,
    });
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn redacted_urls_keep_everything_but_the_secret() {
    for (url, shown) in [
        ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
        (
            "redis://:pw@10.0.0.1:6379/0",
            "redis://:***@10.0.0.1:6379/0",
        ),
        ("rediss://user:p%40ss@h:6380", "rediss://user:***@h:6380"),
        ("redis://justasecret@h/", "redis://***@h/"),
        ("redis://u:a@b@h/", "redis://u:***@h/"),
        ("redis://h/?password=pw", "redis://h/?password=***"),
    ] {
        assert_eq!(redact_url(url), shown, "{url}");
    }
}

#[test]
fn ids_read_back_from_redis_decode_only_from_their_canonical_form() {
    use cluster::redis_store::decode_zone_field;
    assert_eq!(decode_zone_field(b"0"), Some(0));
    assert_eq!(
        decode_zone_field(b"613196575024807935"),
        Some(613_196_575_024_807_935)
    );
    assert_eq!(decode_zone_field(b"18446744073709551615"), Some(u64::MAX));
    for bad in [
        &b""[..],
        b"007",
        b"-1",
        b"+1",
        b" 1",
        b"1e3",
        b"18446744073709551616",
        b"not-a-zone",
        "١٢".as_bytes(),
    ] {
        assert_eq!(decode_zone_field(bad), None, "{bad:?}");
    }
}

#[test]
fn a_script_answer_that_is_not_what_the_scripts_return_is_an_error_not_a_panic() {
    use cluster::redis_store::decode_script_answer;
    use redis::Value;
    let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    let ok = decode_script_answer(Value::Array(vec![
        bulk("ok"),
        bulk("42"),
        Value::Int(7),
        bulk(""),
    ]))
    .expect("a well-formed answer");
    assert_eq!(ok, ("ok".to_owned(), 42, 7, String::new()));
    let e = decode_script_answer(Value::Array(vec![
        bulk("corrupt"),
        bulk("eq:incarnation"),
        bulk(""),
        bulk(&"x".repeat(1000)),
    ]));
    match e {
        Err(RedisStoreError::Corrupt(v)) => {
            assert_eq!(v.key, "eq:incarnation");
            assert_eq!(v.value.len(), cluster::redis_store::BAD_VALUE_SHOWN_MAX);
        }
        other => panic!("{other:?}"),
    }
    for bad in [
        Value::Nil,
        Value::Int(3),
        Value::Array(vec![]),
        Value::Array(vec![bulk("ok"), bulk("écho"), Value::Int(1), bulk("")]),
        Value::Array(vec![bulk("ok"), Value::Int(-1), Value::Int(1), bulk("")]),
        Value::Array(vec![bulk("ok"), bulk("1"), Value::Int(-5), bulk("")]),
        Value::Array(vec![bulk("ok"), bulk("1")]),
    ] {
        assert!(
            matches!(
                decode_script_answer(bad.clone()),
                Err(RedisStoreError::Protocol(_))
            ),
            "{bad:?}"
        );
    }
}

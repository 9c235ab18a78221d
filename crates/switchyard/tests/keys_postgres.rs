//! Virtual keys in Postgres, over real sockets: gateways sharing one Postgres (and no data
//! directory) follow each other's key changes within a second, the CLI writes there when the
//! gateway's config or environment names Postgres, concurrent changes merge instead of
//! overwriting, and an unreachable Postgres neither stops the keys already loaded from working
//! nor hangs anything.
//!
//! Postgres: `127.0.0.1:5432`, user `postgres`, database `test`, or
//! `SWITCHYARD_TEST_POSTGRES_URL`. Each test works in a schema of its own (dropped first and
//! last), so tests run in parallel and re-runs start clean. An unreachable Postgres fails the
//! tests: CI starts one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestDb as Db, TestGateway, call};
use serde_json::{Value, json};
use switchyard::keys::{KeyError, Keys};
use switchyard_core::keys::KeySettings;
use switchyard_testkit::mock::{MockHandle, MockProvider};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const MASTER: &str = "sk-master-for-postgres-key-tests";
const BINARY: &str = env!("CARGO_BIN_EXE_switchyard");

fn config(mock: &MockHandle) -> String {
    format!(
        "[server]\nmaster_key_env = \"TEST_MASTER\"\n\
         [[providers]]\nname = \"alpha\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = [\"mock-*\"]\n",
        mock.base_url()
    )
}

/// A gateway whose keys (and analytics) are in Postgres at `url`, with no data directory.
async fn gateway(mock: &MockHandle, url: &str) -> TestGateway {
    TestGateway::start(
        &config(mock),
        &[("TEST_MASTER", MASTER), ("SWITCHYARD_POSTGRES_URL", url)],
    )
    .await
}

async fn admin(
    gateway: &TestGateway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call(gateway, method, path, MASTER, body).await
}

async fn create(gateway: &TestGateway, settings: Value) -> (String, String) {
    common::create_key(gateway, MASTER, settings).await
}

async fn chat(gateway: &TestGateway, key: &str, model: &str) -> (u16, Value) {
    common::chat_as(gateway, key, model).await
}

/// How long until `gateway` answers a chat with `key` with `status` (and `code`, if given);
/// fails after 5 s.
async fn until(gateway: &TestGateway, key: &str, status: u16, code: Option<&str>) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (got, body) = chat(gateway, key, "mock-a").await;
            if got == status && code.is_none_or(|code| body["error"]["code"] == code) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never answered {status} {code:?}"));
    started.elapsed()
}

fn within_a_second(waited: Duration, what: &str) {
    assert!(waited < Duration::from_secs(1), "{what} after {waited:?}");
}

#[tokio::test]
async fn two_gateways_on_one_postgres_follow_each_others_key_changes_within_a_second() {
    let db = Db::new("switchyard_test_keys_two_gateways").await;
    let mock = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let first = gateway(&mock, &db.url).await;
    let second = gateway(&mock, &db.url).await;

    // Created through the first, used on the second.
    let (id, secret) = create(&first, json!({"name": "shared", "team": "a"})).await;
    within_a_second(until(&second, &secret, 200, None).await, "created");

    // Changed through the second, seen by the first; merged into the stored row even by an
    // instance that has not reloaded the other's change yet.
    let path = format!("/admin/keys/{id}");
    let (status, patched) = admin(
        &second,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    within_a_second(
        until(&first, &secret, 401, Some("key_disabled")).await,
        "disabled",
    );
    let (_, patched) = admin(
        &first,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"team": "b"})),
    )
    .await;
    let (_, patched_again) = admin(
        &second,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"enabled": true, "rpm": 100})),
    )
    .await;
    assert_eq!(patched["team"], "b", "{patched}");
    assert_eq!(
        patched_again["team"], "b",
        "not a stale copy: {patched_again}"
    );
    assert_eq!(patched_again["rpm"], 100);
    within_a_second(until(&first, &secret, 200, None).await, "enabled again");

    // Rotated through the second: the first refuses the old secret and takes the new one.
    let (status, rotated) = admin(
        &second,
        reqwest::Method::POST,
        &format!("{path}/rotate"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let rotated = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(rotated, secret);
    assert_eq!(
        chat(&second, &secret, "mock-a").await.0,
        401,
        "at once here"
    );
    within_a_second(
        until(&first, &secret, 401, Some("invalid_api_key")).await,
        "old secret refused",
    );
    within_a_second(until(&first, &rotated, 200, None).await, "new secret taken");

    // Revoked through the first: the second refuses it within a second.
    let (status, revoked) = admin(&first, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(
        chat(&first, &rotated, "mock-a").await.0,
        401,
        "at once here"
    );
    within_a_second(until(&second, &rotated, 401, None).await, "revoked");

    // A revoked key stays revoked, whichever instance is asked.
    let (status, error) = admin(
        &second,
        reqwest::Method::POST,
        &format!("{path}/rotate"),
        None,
    )
    .await;
    assert_eq!(status, 400, "{error}");
    let (status, _) = admin(
        &second,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(status, 400);
    let (_, listed) = admin(&second, reqwest::Method::GET, "/admin/keys", None).await;
    assert!(listed["data"][0]["revoked_at_ms"].is_u64(), "{listed}");
    assert_eq!(listed["data"][0]["id"], id.as_str());
    let (status, _) = admin(&first, reqwest::Method::GET, "/admin/keys/key_nope", None).await;
    assert_eq!(status, 404);

    first.stop().await;
    second.stop().await;
    db.finish().await;
}

/// The real binary, with an empty environment but `env`.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(BINARY);
    command
        .args(args)
        .env_clear()
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("the binary must exit by itself")
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_writes_keys_to_the_postgres_of_the_gateways_config() {
    let db = Db::new("switchyard_test_keys_cli").await;
    let mock = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let running = gateway(&mock, &db.url).await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config_file = dir.path().join("switchyard.toml");
    std::fs::write(
        &config_file,
        format!(
            "{}[storage]\ndata_dir = \"{}\"\npostgres_url = \"{}\"\n",
            config(&mock),
            data_dir.display(),
            db.url
        ),
    )
    .unwrap();

    let (ok, created, stderr) = cli(
        &[
            "keys",
            "create",
            "--config",
            config_file.to_str().unwrap(),
            "--name",
            "from-cli",
            "--json",
        ],
        &[],
    )
    .await;
    assert!(ok, "{stderr}");
    let created: Value = serde_json::from_str(&created).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    within_a_second(
        until(&running, &secret, 200, None).await,
        "created by the CLI",
    );
    assert!(
        !data_dir.join("keys.db").exists(),
        "nothing written to the data directory"
    );

    // `$SWITCHYARD_POSTGRES_URL` names the store as it does for the gateway, whatever the
    // data directory.
    let other_dir = dir.path().join("other");
    let (ok, listed, stderr) = cli(
        &[
            "keys",
            "list",
            "--data-dir",
            other_dir.to_str().unwrap(),
            "--json",
        ],
        &[("SWITCHYARD_POSTGRES_URL", &db.url)],
    )
    .await;
    assert!(ok && listed.contains(&id), "{listed}{stderr}");
    assert!(!other_dir.join("keys.db").exists());

    let (ok, _, stderr) = cli(
        &[
            "keys",
            "revoke",
            &id,
            "--config",
            config_file.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(ok, "{stderr}");
    within_a_second(
        until(&running, &secret, 401, None).await,
        "revoked by the CLI",
    );

    running.stop().await;
    db.finish().await;
}

fn settings(name: &str) -> KeySettings {
    KeySettings {
        name: name.to_owned(),
        enabled: true,
        ..KeySettings::default()
    }
}

#[tokio::test]
async fn concurrent_changes_to_one_key_from_two_instances_all_land() {
    let db = Db::new("switchyard_test_keys_concurrent").await;
    let first = Keys::connect(&db.url).await.unwrap();
    let second = Keys::connect(&db.url).await.unwrap();
    assert_eq!(first.store_kind(), "postgres");
    let (key, _) = first.create(settings("contended")).await.unwrap();
    // Each instance sets its own field over and over, concurrently; a merge into a stale
    // copy would put the other's field back to an older value.
    let writer = |keys: Arc<Keys>, field: &'static str| {
        let id = key.id.clone();
        tokio::spawn(async move {
            for n in 1..=50u64 {
                keys.update(&id, &json!({ field: n })).await.unwrap();
            }
        })
    };
    let (a, b) = tokio::join!(
        writer(Arc::clone(&first), "rpm"),
        writer(Arc::clone(&second), "tpm")
    );
    a.unwrap();
    b.unwrap();
    first.reload().await.unwrap();
    let stored = first.get(&key.id).unwrap();
    assert_eq!(
        (stored.settings.rpm, stored.settings.tpm),
        (Some(50), Some(50))
    );

    // A key revoked through one instance is neither rotated nor changed through the other,
    // even before that one has reloaded.
    second.revoke(&key.id).await.unwrap();
    assert!(matches!(
        first.rotate(&key.id).await,
        Err(KeyError::Invalid(_))
    ));
    assert!(matches!(
        first.update(&key.id, &json!({"rpm": 1})).await,
        Err(KeyError::Invalid(_))
    ));
    assert!(matches!(
        first.revoke("key_nope").await,
        Err(KeyError::NotFound(_))
    ));
    // Revoking again keeps the first time.
    let once = second.get(&key.id).unwrap().revoked_at_ms;
    assert!(once.is_some());
    assert_eq!(first.revoke(&key.id).await.unwrap().revoked_at_ms, once);

    // A third instance starting now runs the migrations again (a no-op) and loads it all.
    let third = Keys::connect(&db.url).await.unwrap();
    assert_eq!(third.list().len(), 1);
    drop((first, second, third));
    db.finish().await;
}

#[tokio::test]
async fn an_unreachable_postgres_at_start_is_a_clear_error_without_the_password() {
    let error = match Keys::connect("postgres://postgres:sekrit-password@127.0.0.1:1/test").await {
        Ok(_) => panic!("connected to nothing"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("key store: postgres: connecting"), "{error}");
    assert!(!error.contains("sekrit-password"), "{error}");
    let error =
        match Keys::connect("postgres://postgres:sekrit-password@127.0.0.1:notaport/x").await {
            Ok(_) => panic!("parsed a bad URL"),
            Err(error) => error.to_string(),
        };
    assert!(error.contains("invalid postgres_url"), "{error}");
    assert!(!error.contains("sekrit-password"), "{error}");
}

/// What the proxy in front of Postgres does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Passes bytes both ways.
    Open,
    /// Closes every connection, open or new (a Postgres that is down).
    Cut,
    /// Keeps connections, open or new, but passes nothing (a network that drops packets).
    Hang,
}

/// A TCP proxy in front of the test Postgres, to play an unreachable one.
struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, modes) = watch::channel(Mode::Open);
        tokio::spawn(async move {
            while let Ok((mut near, _)) = listener.accept().await {
                let mut modes = modes.clone();
                tokio::spawn(async move {
                    let mode = *modes.borrow_and_update();
                    match mode {
                        Mode::Cut => return,
                        // Held until the mode changes, then closed.
                        Mode::Hang => {
                            let _ = modes.changed().await;
                            return;
                        }
                        Mode::Open => {}
                    }
                    let Ok(mut far) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let stopped = async {
                        loop {
                            if modes.changed().await.is_err() {
                                return Mode::Cut;
                            }
                            let mode = *modes.borrow_and_update();
                            if mode != Mode::Open {
                                return mode;
                            }
                        }
                    };
                    let mode = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut near, &mut far) => return,
                        mode = stopped => mode,
                    };
                    if mode == Mode::Hang {
                        let _ = modes.changed().await;
                    }
                    drop((near, far));
                });
            }
        });
        Proxy { addr, mode }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

/// A proxy in front of the Postgres of `url`, and `url` pointing at the proxy.
async fn proxy_for(url: &str) -> (Proxy, String) {
    let config = tokio_postgres::Config::from_str(url).unwrap();
    let tokio_postgres::config::Host::Tcp(host) = &config.get_hosts()[0] else {
        panic!("the proxy tests need a TCP Postgres");
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let hostport = format!("{host}:{port}");
    assert!(
        url.contains(&format!("@{hostport}")),
        "the proxy tests need user@host:port in the URL"
    );
    // `localhost` and other names: the proxy dials the loopback address.
    let upstream = hostport
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)));
    let proxy = Proxy::start(upstream).await;
    let proxied = url.replacen(&format!("@{hostport}"), &format!("@{}", proxy.addr), 1);
    (proxy, proxied)
}

#[tokio::test]
async fn while_postgres_is_down_loaded_keys_keep_working_and_writes_fail_clearly() {
    let db = Db::new("switchyard_test_keys_outage").await;
    let (proxy, proxied) = proxy_for(&db.url).await;
    let mock = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let gateway = gateway(&mock, &proxied).await;
    let (id, secret) = create(&gateway, json!({"name": "survivor"})).await;
    assert_eq!(chat(&gateway, &secret, "mock-a").await.0, 200);

    proxy.set(Mode::Cut);
    let started = Instant::now();
    let (status, error) = admin(
        &gateway,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 503, "{error}");
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("key store: postgres: "), "{message}");
    assert!(
        !message.contains(&db.schema),
        "no URL in the message: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed, did not hang"
    );
    // A reload (what the poll runs) fails too; the keys loaded last still work.
    let reload = gateway.state.keys.reload().await;
    assert!(matches!(reload, Err(KeyError::Store(_))), "{reload:?}");
    assert_eq!(chat(&gateway, &secret, "mock-a").await.0, 200);
    let (status, listed) = admin(&gateway, reqwest::Method::GET, "/admin/keys", None).await;
    assert_eq!(
        (status, listed["data"][0]["id"].as_str()),
        (200, Some(id.as_str()))
    );

    // Back up: writes work again and the gateway follows without a restart.
    proxy.set(Mode::Open);
    let (status, error) = admin(
        &gateway,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{error}");
    assert_eq!(chat(&gateway, &secret, "mock-a").await.0, 401);

    gateway.stop().await;
    db.finish().await;
}

#[tokio::test]
async fn a_postgres_that_stops_answering_fails_calls_in_bounded_time() {
    let db = Db::new("switchyard_test_keys_hang").await;
    let (proxy, proxied) = proxy_for(&db.url).await;
    let keys = Keys::connect(&proxied).await.unwrap();
    let (key, secret) = keys.create(settings("steady")).await.unwrap();

    proxy.set(Mode::Hang);
    let reload = tokio::time::timeout(Duration::from_secs(15), keys.reload())
        .await
        .expect("the reload hung");
    assert!(
        matches!(&reload, Err(KeyError::Store(message)) if message.contains("no answer")),
        "{reload:?}"
    );
    let now = switchyard::cache::unix_ms();
    assert_eq!(
        keys.authenticate(secret.as_bytes(), now).unwrap().id,
        key.id
    );
    let revoke = tokio::time::timeout(Duration::from_secs(15), keys.revoke(&key.id))
        .await
        .expect("the revoke hung");
    assert!(matches!(revoke, Err(KeyError::Store(_))), "{revoke:?}");

    // Answering again: the hung connections were dropped, new ones work.
    proxy.set(Mode::Open);
    let revoked = keys.revoke(&key.id).await.unwrap();
    assert!(revoked.revoked_at_ms.is_some());
    assert!(keys.authenticate(secret.as_bytes(), now).is_err());
    drop(keys);
    db.finish().await;
}

#[tokio::test]
async fn the_cli_names_an_unreachable_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        "[storage]\npostgres_url = \"postgres://postgres:sekrit-password@127.0.0.1:1/test\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = cli(&["keys", "list", "--config", config.to_str().unwrap()], &[]).await;
    assert!(!ok);
    assert!(
        stderr.contains("key store: postgres: connecting"),
        "{stderr}"
    );
    assert!(!stderr.contains("sekrit-password"), "{stderr}");
}

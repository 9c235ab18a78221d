//! Tests of the real `switchyard` binary: start-up errors, `config check`, graceful
//! shutdown on SIGTERM with a stream in flight, and the trace flush at shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{client, sse_data, stream_text};
use switchyard_testkit::mock::{Behavior, MockProvider};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BINARY: &str = env!("CARGO_BIN_EXE_switchyard");

/// A config file in a fresh temp dir, removed at the end of the test process.
fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The binary with an empty environment (no provider keys leak in from the machine).
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_clear()
        .env("RUST_LOG", "info")
        .env("SWITCHYARD_DATA_DIR", ":memory:");
    for (name, value) in env {
        command.env(name, value);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = tokio::time::timeout(Duration::from_secs(20), command(args, env).output())
        .await
        .expect("the binary must exit by itself")
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const PROVIDER: &str = r#"
[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "MOCK_KEY"
"#;

#[tokio::test]
async fn bad_configs_exit_non_zero_naming_the_key_before_listening() {
    let cases = [
        (
            "unknown-key",
            format!("{PROVIDER}\n[server]\nlisten_addr = \"x\"\n"),
            "listen_addr",
            vec![("MOCK_KEY", "k")],
        ),
        (
            "unknown-provider",
            format!(
                "{PROVIDER}\n[[routes]]\nmodel = \"r\"\ntargets = [ {{ provider = \"nope\", model = \"m\" }} ]\n"
            ),
            "routes[0].targets[0].provider",
            vec![("MOCK_KEY", "k")],
        ),
        (
            "missing-env",
            PROVIDER.to_owned(),
            "MOCK_KEY is not set",
            vec![],
        ),
    ];
    for (name, text, expected, env) in cases {
        let path = write_config(name, &text);
        let path = path.to_str().unwrap();
        let (ok, stdout, stderr) = run_to_exit(
            &["serve", "--config", path, "--listen", "127.0.0.1:0"],
            &env,
        )
        .await;
        assert!(!ok, "{name} must fail");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(
            !stdout.contains("listening"),
            "{name} must fail before listening"
        );

        let (ok, _, stderr) = run_to_exit(&["config", "check", path], &env).await;
        assert!(!ok, "config check {name}");
        assert!(stderr.contains(expected), "config check {name}: {stderr}");
    }
    let path = write_config("good", PROVIDER);
    let (ok, stdout, _) = run_to_exit(
        &["config", "check", path.to_str().unwrap()],
        &[("MOCK_KEY", "k")],
    )
    .await;
    assert!(ok);
    assert!(stdout.contains("ok (1 providers, 0 routes)"), "{stdout}");
}

#[tokio::test]
async fn refuses_to_expose_an_unauthenticated_gateway() {
    let path = write_config("exposed", PROVIDER);
    let args = [
        "serve",
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
    ];
    let (ok, _, stderr) = run_to_exit(&args, &[("MOCK_KEY", "k")]).await;
    assert!(!ok);
    assert!(stderr.contains("SWITCHYARD_MASTER_KEY"), "{stderr}");
    assert!(stderr.contains("loopback"), "{stderr}");
}

#[tokio::test]
async fn no_providers_points_at_the_demo() {
    let (ok, _, stderr) = run_to_exit(&["serve", "--listen", "127.0.0.1:0"], &[]).await;
    assert!(!ok);
    assert!(stderr.contains("no providers configured"), "{stderr}");
    assert!(stderr.contains("switchyard demo"), "{stderr}");
}

/// Starts the binary and waits for its address line.
async fn start(args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let mut child = command(args, env).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the gateway must announce its address")
        .unwrap()
        .unwrap_or_default();
    let address = line
        .strip_prefix("switchyard listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, address)
}

#[tokio::test]
async fn discovers_providers_from_the_environment() {
    let mock = MockProvider::builder()
        .name("envmock")
        .expect_api_key("sk-env")
        .spawn()
        .await
        .unwrap();
    let base = format!("{}/v1", mock.base_url());
    let (mut child, address) = start(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("OPENAI_API_KEY", "sk-env"), ("OPENAI_BASE_URL", &base)],
    )
    .await;
    let response = client()
        .post(format!("{address}/v1/chat/completions"))
        .body(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"from env"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-provider"], "openai");
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("envmock says: from env")
    );
    child.kill().await.unwrap();
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_stream_finish_then_exits() {
    let mock = MockProvider::builder()
        .name("slow")
        .behavior(Behavior {
            chunk_delay_ms: 150,
            ..Behavior::default()
        })
        .spawn()
        .await
        .unwrap();
    let config = write_config(
        "shutdown",
        &format!(
            "[server]\nshutdown_grace = \"20s\"\n[[providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = [\"mock-*\"]\n",
            mock.base_url()
        ),
    );
    let (mut child, address) = start(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    )
    .await;

    let mut response = client()
        .post(format!("{address}/v1/chat/completions"))
        .body(r#"{"model":"mock-small","stream":true,"messages":[{"role":"user","content":"one two three four five six"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    let first = response.chunk().await.unwrap().unwrap();
    text.push_str(&String::from_utf8_lossy(&first));

    let pid = child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());

    // The stream in flight runs to its end.
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert_eq!(stream_text(&data), "slow says: one two three four five six");

    // Then the process exits cleanly, and nothing listens any more.
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits after draining")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let refused = client().get(format!("{address}/healthz")).send().await;
    assert!(refused.is_err(), "no new connections after shutdown");
}

#[tokio::test]
async fn sigterm_flushes_the_pending_spans() {
    // The mock doubles as the OTLP collector, named by the standard variable; with an hour
    // between batches, only the shutdown flush can export anything.
    let mock = MockProvider::builder()
        .name("traced")
        .spawn()
        .await
        .unwrap();
    let config = write_config(
        "traces",
        &format!(
            "[[providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = [\"mock-*\"]\n",
            mock.base_url()
        ),
    );
    let (mut child, address) = start(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &mock.base_url()),
            ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
        ],
    )
    .await;
    let response = client()
        .post(format!("{address}/v1/chat/completions"))
        .body(r#"{"model":"mock-small","messages":[{"role":"user","content":"trace me"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let traceparent = &mock.requests()[0].headers["traceparent"];
    assert!(traceparent.starts_with("00-"), "{traceparent}");
    assert_eq!(
        mock.trace_exports(),
        0,
        "nothing is due before the shutdown"
    );

    let pid = child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits after flushing")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(mock.trace_exports() >= 1, "the pending spans were flushed");
}

#[tokio::test]
async fn demo_serves_without_any_keys() {
    let (mut child, address) =
        start(&["demo", "--listen", "127.0.0.1:0", "--no-traffic"], &[]).await;
    for route in ["demo", "fast", "smart"] {
        let response = client()
            .post(format!("{address}/v1/chat/completions"))
            .body(format!(
                r#"{{"model":"{route}","messages":[{{"role":"user","content":"hello demo"}}]}}"#
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{route}");
        let provider = response.headers()["x-switchyard-provider"]
            .to_str()
            .unwrap()
            .to_owned();
        let text = response.text().await.unwrap();
        assert!(
            text.contains(&format!("{provider} says: hello demo")),
            "{route}: {text}"
        );
    }
    // The `fast` route caches: the same request again is a hit.
    let response = client()
        .post(format!("{address}/v1/chat/completions"))
        .body(r#"{"model":"fast","messages":[{"role":"user","content":"hello demo"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-switchyard-cache"], "HIT");
    // The simulated models have demo prices: the spend ledger and the budgets show them.
    let spend: serde_json::Value = serde_json::from_str(
        &client()
            .get(format!("{address}/admin/spend?group_by=route"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        spend["total"]["cost_usd"].as_f64().unwrap() > 0.0,
        "{spend}"
    );
    let budgets = client()
        .get(format!("{address}/admin/budgets"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(budgets.contains("smart-soft"), "{budgets}");
    child.kill().await.unwrap();
}

/// Two gateway processes sharing the real Redis enforce one global limit together: the
/// admitted total is exactly the limit, not the limit times the number of replicas.
#[tokio::test]
async fn two_processes_share_one_limit_through_redis() {
    const LIMIT: usize = 25;
    let mock = MockProvider::builder()
        .name("shared")
        .spawn()
        .await
        .unwrap();
    // A fresh limit name per run: its Redis keys are new.
    let name = format!("global-{:x}", fastrand::u64(..));
    let config = write_config(
        "redis-shared",
        &format!(
            "[storage]\nredis_url = \"redis://127.0.0.1:6379/0\"\n[rate_limits]\non_store_error = \"fail_closed\"\n[[rate_limits.limits]]\nname = \"{name}\"\nscope = \"global\"\nrequests = {LIMIT}\nper = \"1h\"\n[[providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = [\"mock-*\"]\n",
            mock.base_url()
        ),
    );
    let args = [
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    let (mut first, first_address) = start(&args, &[]).await;
    let (mut second, second_address) = start(&args, &[]).await;
    let send = |address: String| async move {
        let response = client()
            .post(format!("{address}/v1/chat/completions"))
            .body(r#"{"model":"mock-a","messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!(status == 200 || status == 429, "{status}: {body}");
        status == 200
    };
    // First each process in turn, so that both are known to count against the one limit
    // (however the scheduler favours one of them under a burst)...
    const EACH: usize = 10;
    for address in [&first_address, &second_address] {
        for _ in 0..EACH {
            assert!(send(address.clone()).await, "under the limit");
        }
    }
    // ...then a concurrent burst at both: exactly what is left of the limit gets through.
    let tasks: Vec<_> = (0..(2 * LIMIT))
        .map(|i| {
            let address = if i % 2 == 0 {
                first_address.clone()
            } else {
                second_address.clone()
            };
            tokio::spawn(send(address))
        })
        .collect();
    let mut admitted = 2 * EACH;
    for task in tasks {
        if task.await.unwrap() {
            admitted += 1;
        }
    }
    // Tolerance: none. One script per admission, atomic in Redis.
    assert_eq!(admitted, LIMIT);
    assert_eq!(mock.calls(), LIMIT as u64);
    first.kill().await.unwrap();
    second.kill().await.unwrap();
}

/// `switchyard keys` on the data directory of a running gateway (which follows within a
/// second), and through its admin API with `--url`.
#[tokio::test]
async fn the_keys_command_manages_a_running_gateways_keys() {
    const MASTER: &str = "sk-master-cli-test";
    let mock = MockProvider::builder().name("cli").spawn().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let config = write_config(
        "keys-cli",
        &format!(
            "[server]\nmaster_key_env = \"CLI_MASTER\"\n[[providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = [\"mock-*\"]\n",
            mock.base_url()
        ),
    );
    let env = [
        ("SWITCHYARD_DATA_DIR", data_dir.as_str()),
        ("CLI_MASTER", MASTER),
    ];
    let (ok, created, stderr) = run_to_exit(
        &[
            "keys", "create", "--name", "from-cli", "--team", "ops", "--model", "mock-*", "--json",
        ],
        &env,
    )
    .await;
    assert!(ok, "{stderr}");
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["team"], "ops");

    let (mut gateway, address) = start(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &env,
    )
    .await;
    let chat = |key: String| {
        let address = address.clone();
        async move {
            client()
                .post(format!("{address}/v1/chat/completions"))
                .bearer_auth(key)
                .body(r#"{"model":"mock-a","messages":[{"role":"user","content":"hi"}]}"#)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(chat(secret.clone()).await, 200);

    // The data directory can come from the gateway's config file.
    let with_dir = write_config(
        "keys-cli-dir",
        &format!("[storage]\ndata_dir = \"{data_dir}\"\n"),
    );
    let (ok, listed, stderr) = run_to_exit(
        &["keys", "list", "--config", with_dir.to_str().unwrap()],
        &[],
    )
    .await;
    assert!(ok && listed.contains(&id), "{listed}{stderr}");

    // Text output for people.
    let (ok, listed, _) = run_to_exit(&["keys", "list"], &env).await;
    assert!(
        ok && listed.contains(&id) && listed.contains("from-cli") && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(&secret[10..]));

    let (ok, _, stderr) = run_to_exit(&["keys", "revoke", &id], &env).await;
    assert!(ok, "{stderr}");
    let started = std::time::Instant::now();
    while chat(secret.clone()).await != 401 {
        assert!(started.elapsed() < Duration::from_secs(2), "still accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // Through the admin API.
    let remote = [("CLI_MASTER", MASTER)];
    let (ok, listed, stderr) = run_to_exit(
        &[
            "keys",
            "list",
            "--url",
            &address,
            "--admin-key",
            MASTER,
            "--json",
        ],
        &remote,
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(
        listed.contains(&id) && listed.contains("revoked_at_ms"),
        "{listed}"
    );
    let (ok, _, stderr) = run_to_exit(
        &["keys", "list", "--url", &address, "--admin-key", "wrong"],
        &remote,
    )
    .await;
    assert!(!ok && stderr.contains("401"), "{stderr}");
    gateway.kill().await.unwrap();
}

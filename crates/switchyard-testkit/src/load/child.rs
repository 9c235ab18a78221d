//! The processes under test: starting them, learning their address, and making sure they
//! die with the harness.
//!
//! A child is started with `kill_on_drop`, so every way out of the harness (an error, a
//! dropped future after Ctrl-C) kills it; the normal path also waits for it. What a child
//! prints after its listening line is drained in the background (a full pipe would stall
//! it) and the last lines are kept to explain a failure. This module does not measure.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use super::error::LoadError;
use super::options::{CacheMode, LimitStore};

/// How many lines of a child's output are kept for error messages.
const KEPT_LINES: usize = 20;

/// A running child process that printed `<banner> listening on http://ADDR`.
#[derive(Debug)]
pub struct ChildProcess {
    /// Names the child in messages ("mock", "gateway").
    role: &'static str,
    /// The process; `kill_on_drop` is set, so dropping it kills it.
    child: Child,
    /// Cached because `Child::id` is gone once the child has been reaped.
    pid: u32,
    /// Where it listens, from its banner; always a loopback address.
    address: SocketAddr,
    /// The last lines it printed on either stream, for diagnosing a crash.
    output: OutputTail,
}

impl ChildProcess {
    /// Starts `program args`, waits up to `startup_timeout` for its listening line, and
    /// returns once the address is known. `banner` is the first word of that line.
    pub async fn start(
        role: &'static str,
        program: &Path,
        args: &[OsString],
        banner: &str,
        startup_timeout: Duration,
    ) -> Result<Self, LoadError> {
        if !program.is_file() {
            return Err(LoadError::MissingBinary {
                role,
                path: program.to_path_buf(),
            });
        }
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LoadError::Spawn {
                role,
                path: program.to_path_buf(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        let output = OutputTail::default();
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(output.clone().drain(stderr));
        }
        let Some(stdout) = child.stdout.take() else {
            return Err(LoadError::Startup {
                role,
                reason: "its stdout was not captured".to_owned(),
                output: String::new(),
            });
        };
        let prefix = format!("{banner} listening on http://");
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(startup_timeout, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(address) = line.trim().strip_prefix(&prefix) {
                    return Some(address.trim_end_matches('/').to_owned());
                }
                output.push(line);
            }
            None
        })
        .await;
        let address = match found {
            Ok(Some(address)) => address,
            Ok(None) => {
                // A child that closed its stdout is usually exiting; give it a moment to.
                let status = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
                return Err(LoadError::Startup {
                    role,
                    reason: match status {
                        Ok(Ok(status)) => format!("it exited ({status}) before listening"),
                        _ => "it closed its stdout before listening".to_owned(),
                    },
                    output: output.text(),
                });
            }
            Err(_) => {
                return Err(LoadError::Startup {
                    role,
                    reason: format!("no \"{prefix}...\" line within {:?}", startup_timeout),
                    output: output.text(),
                });
            }
        };
        let address = parse_loopback_address(&address).map_err(|reason| LoadError::Startup {
            role,
            reason,
            output: output.text(),
        })?;
        tokio::spawn(output.clone().drain_lines(lines));
        Ok(Self {
            role,
            child,
            pid,
            address,
            output,
        })
    }

    /// The operating system's id of the process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where the child listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Names the child in messages.
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// The exit status if the child has died on its own since it started.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines the child printed.
    pub fn recent_output(&self) -> String {
        self.output.text()
    }

    /// Kills the child and waits until it is gone.
    pub async fn stop(mut self) {
        // Errs only when it already exited, which is the goal anyway.
        let _ = self.child.kill().await;
    }
}

/// Accepts `127.0.0.1:PORT` (or another loopback address) and nothing else: the harness
/// only ever loads this machine.
pub fn parse_loopback_address(text: &str) -> Result<SocketAddr, String> {
    let address: SocketAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address and port"))?;
    if !address.ip().is_loopback() {
        return Err(format!("{address} is not a loopback address"));
    }
    if address.port() == 0 {
        return Err(format!("{address} has no port"));
    }
    Ok(address)
}

/// The last [`KEPT_LINES`] lines a child wrote.
#[derive(Debug, Clone, Default)]
struct OutputTail {
    // A std Mutex: pushed once per output line and never held across an await.
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl OutputTail {
    fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() == KEPT_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn text(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn drain(self, stream: impl AsyncRead + Unpin) {
        self.drain_lines(BufReader::new(stream).lines()).await;
    }

    async fn drain_lines<R: tokio::io::AsyncBufRead + Unpin>(self, mut lines: tokio::io::Lines<R>) {
        while let Ok(Some(line)) = lines.next_line().await {
            self.push(line);
        }
    }
}

/// The gateway's config for one run, in the temp directory; removed when dropped.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    /// Writes `contents` to a new file that no other run can be using.
    pub fn create(contents: &str) -> Result<Self, LoadError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "switchyard-load-{}-{nanos}.toml",
            std::process::id()
        ));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            // create_new: never follow or reuse a file someone else put there.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            file.write_all(contents.as_bytes())
        };
        write().map_err(|source| LoadError::Io {
            context: format!("writing the gateway config {}", path.display()),
            source,
        })?;
        Ok(Self { path })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        // Best effort: a leftover file in the temp directory is harmless.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The gateway config the harness runs with: one OpenAI-shaped provider, the mock, serving
/// every `mock-*` model, and no master key (the gateway only listens on loopback). With
/// `otlp`, the gateway exports its traces to that collector; with `limits`, every request
/// passes three rate limits that never refuse (fresh names per run, so Redis keys are new).
pub fn gateway_config(
    mock: SocketAddr,
    otlp: Option<SocketAddr>,
    limits: Option<LimitStore>,
    cache: Option<CacheMode>,
) -> String {
    let mut config = format!(
        "# Written by switchyard-load for one run and removed when it ends.\n\
         [[providers]]\n\
         name = \"mock\"\n\
         kind = \"openai\"\n\
         base_url = \"http://{mock}/v1\"\n\
         models = [\"mock-*\"]\n"
    );
    if let Some(collector) = otlp {
        config.push_str(&format!(
            "[telemetry]\notlp_endpoint = \"http://{collector}\"\n"
        ));
    }
    if let Some(store) = limits {
        if store == LimitStore::Redis {
            config.push_str("[storage]\nredis_url = \"redis://127.0.0.1:6379/0\"\n");
        }
        let run = format!("{:x}", fastrand::u32(..));
        config.push_str(&format!(
            "[[rate_limits.limits]]\nname = \"load-rpm-{run}\"\nscope = \"key\"\nrequests = 1000000000\nper = \"1m\"\n\
             [[rate_limits.limits]]\nname = \"load-tpm-{run}\"\nscope = \"key\"\ntokens = 1000000000000\nper = \"1m\"\n\
             [[rate_limits.limits]]\nname = \"load-concurrency-{run}\"\nscope = \"global\"\nconcurrent = 1000000\n"
        ));
    }
    if cache.is_some() {
        config.push_str("[cache]\nenabled = true\n");
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_with_a_port_are_accepted() {
        assert_eq!(
            parse_loopback_address("127.0.0.1:4000"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 4000)))
        );
        assert!(parse_loopback_address("[::1]:80").is_ok());
        assert!(parse_loopback_address("10.0.0.1:4000").is_err());
        assert!(parse_loopback_address("127.0.0.1:0").is_err());
        assert!(parse_loopback_address("localhost:4000").is_err());
    }

    #[test]
    fn the_gateway_config_points_at_the_mock() {
        let mock = SocketAddr::from(([127, 0, 0, 1], 4321));
        let config = gateway_config(mock, None, None, None);
        assert!(config.contains("base_url = \"http://127.0.0.1:4321/v1\""));
        assert!(config.contains("models = [\"mock-*\"]"));
        assert!(config.contains("kind = \"openai\""));
        assert!(!config.contains("[telemetry]"));
        let collector: SocketAddr = "127.0.0.1:4322".parse().unwrap();
        let config = gateway_config(mock, Some(collector), None, None);
        assert!(config.ends_with("[telemetry]\notlp_endpoint = \"http://127.0.0.1:4322\"\n"));
        let config = gateway_config(mock, None, Some(LimitStore::Redis), Some(CacheMode::Hit));
        assert!(config.contains("redis_url"));
        assert_eq!(config.matches("[[rate_limits.limits]]").count(), 3);
        assert!(config.contains("[cache]\nenabled = true\n"));
    }

    #[test]
    fn the_config_file_is_removed_on_drop() {
        let file = ConfigFile::create("x = 1\n").unwrap();
        let path = file.path().to_path_buf();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x = 1\n");
        drop(file);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_child_that_never_listens_is_reported_with_its_output() {
        let error = ChildProcess::start(
            "mock",
            Path::new("/bin/sh"),
            &["-c".into(), "echo starting; echo oops >&2; exit 3".into()],
            "switchyard-mock",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(error.contains("exited"), "{error}");
        assert!(error.contains("starting"), "{error}");
    }

    #[tokio::test]
    async fn a_child_banner_gives_its_address() {
        let child = ChildProcess::start(
            "mock",
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "echo log line; echo 'switchyard-mock listening on http://127.0.0.1:4555'; \
                 exec sleep 30"
                    .into(),
            ],
            "switchyard-mock",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(child.address(), SocketAddr::from(([127, 0, 0, 1], 4555)));
        let pid = child.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        child.stop().await;
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}

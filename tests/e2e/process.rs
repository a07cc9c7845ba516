//! A real `sluice server` process for the tests that kill, stop or cut it off.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_e2e::{bootstrap, unique};

/// The `sluice` binary built beside this test binary (`target/debug/sluice`).
/// The `sluice` binary built beside this test binary.
pub fn sluice_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug");
    dir.join("sluice")
}

/// A `sluice server` child process, its URL and its log.
pub struct Process {
    pub child: Child,
    pub url: String,
    log: PathBuf,
}

/// Lines of a failing test's server log printed with its failure.
const LOG_TAIL: usize = 80;

impl Drop for Process {
    /// A failing test must not leave a server running, and shows what its server said
    /// last: on CI that output is all there is.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            // Without the repeats of a broker that is away: each failed connection is
            // logged by librdkafka and again by rdkafka.
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains(" rdkafka::client: ") && !l.contains("Connection refused"))
                .collect();
            eprintln!(
                "--- the last {} lines of {}, without failed connections:",
                LOG_TAIL.min(lines.len()),
                self.log.display()
            );
            for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// Start `sluice server` on the test broker; see [`start_on`].
pub async fn start(service_id: &str, port: u16) -> Process {
    start_on(&bootstrap(), service_id, port).await
}

/// Start `sluice server` with `service_id` on `port` against `bootstrap_servers`, with a new,
/// empty state directory, and wait until it answers. Its log (with a line for each batch
/// a query reads and writes, unless `RUST_LOG` says otherwise) is appended to
/// `$TMPDIR/<service id>server.log`.
pub async fn start_on(bootstrap_servers: &str, service_id: &str, port: u16) -> Process {
    let state = std::env::temp_dir().join(unique("crash-state"));
    let log = std::env::temp_dir().join(format!("{service_id}server.log"));
    let filter = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| "info,rdkafka=warn,sluice_stream_exec=debug".into());
    let child = Command::new(sluice_binary())
        .args([
            "server",
            "--bootstrap-servers",
            bootstrap_servers,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--service-id",
            service_id,
            "--state-dir",
        ])
        .arg(&state)
        .env("RUST_LOG", filter)
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", sluice_binary().display()));
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/info")).await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Process { child, url, log }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

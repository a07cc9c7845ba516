//! What the benchmark programs share: finding the broker and the `sluice` binary, creating
//! topics, talking to a server's REST API, and reading a process's memory.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::{json, Map, Value};

/// An admin client of a broker.
pub type Admin = AdminClient<DefaultClientContext>;

/// An admin client of the broker at `bootstrap`.
pub fn admin(bootstrap: &str) -> Result<Admin> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?)
}

/// Create `topic` with `partitions` partitions and one replica (the local broker).
pub async fn create_topic(admin: &Admin, topic: &str, partitions: i32) -> Result<()> {
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for result in admin.create_topics([&new], &AdminOptions::new()).await? {
        result.map_err(|(name, code)| anyhow!("creating the topic {name}: {code}"))?;
    }
    Ok(())
}

/// The broker to run against (`SLUICE_BENCH_BOOTSTRAP`, else `scripts/kafka-local`'s),
/// once it accepts connections.
pub fn broker() -> Result<String> {
    let bootstrap =
        std::env::var("SLUICE_BENCH_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    if std::net::TcpStream::connect(&bootstrap).is_err() {
        bail!("no broker at {bootstrap}: start one with scripts/kafka-local start");
    }
    Ok(bootstrap)
}

/// The `sluice` binary beside this program (built with the same profile); `build` is
/// the command that makes it, for the error when it is missing.
pub fn sluice_beside_me(build: &str) -> Result<PathBuf> {
    let sluice = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .join("sluice");
    if !sluice.exists() {
        bail!("{} is missing: {build} first", sluice.display());
    }
    Ok(sluice)
}

/// Run `sql` through the server at `url` with `properties` (`streamsProperties`); a
/// non-2xx answer is an error with its body.
pub async fn ksql(url: &str, sql: &str, properties: Map<String, Value>) -> Result<Value> {
    let r = reqwest::Client::new()
        .post(format!("{url}/ksql"))
        .json(&json!({"ksql": sql, "streamsProperties": properties}))
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await?;
    if !status.is_success() {
        bail!("{sql}: {body}");
    }
    Ok(body)
}

/// CPU time (user + system, all threads) process `pid` has used, in seconds: `/proc/<pid>/stat`
/// (`self` for this process), in the kernel's USER_HZ ticks of 10 ms. 0 when unreadable.
/// Divided by the events processed, it is the cost per event, which unlike events/s does
/// not change much when something else shares the machine.
pub fn cpu_seconds(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces:
            // state is field 3, utime 14 and stime 15.
            let rest = &s[s.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime = fields.get(11)?.parse::<f64>().ok()?;
            let stime = fields.get(12)?.parse::<f64>().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// A line of `/proc/<pid>/status` in MB (`VmRSS:`, `VmHWM:`); 0 when unreadable.
pub fn proc_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

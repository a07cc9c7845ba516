//! `throughput`: how fast Sluice runs its benchmark queries, against the raw consume rate
//! of the Kafka client on the same topic. Prints markdown tables.
//!
//! Kafka mode (the default), against the broker from `scripts/kafka-local` (or
//! `SLUICE_BENCH_BOOTSTRAP`):
//! 1. preloads two single-partition topics, once (later runs reuse them): fraud-style
//!    card transactions, ~120 bytes of JSON each, 100,000 cards, and Nexmark bids from the
//!    `nexmark` crate (its default configuration), as JSON;
//! 2. measures librdkafka's own consume rate on each topic (the fastest of three passes),
//!    and, on the fraud topic, the ceiling of a query's Kafka work: librdkafka alone
//!    reading as a query does and writing every record, or one in two, back in
//!    transactions (a "raw pipe", no engine; also the fastest of three);
//! 3. runs each query in a fresh `sluice server` (the release binary beside this one),
//!    from the beginning of its topic, and reports events/s from its first record read
//!    (the query's `records_in` counter, sampled every 20 ms) to the commit of its last
//!    preloaded one (its consumer group's committed offset, sampled every 20 ms), the
//!    ratio to the raw rate, and the server's peak resident memory (`VmHWM`);
//! 4. then produces new events at a fixed rate, with the current time as event time, and
//!    reports p50/p99 latency from event time to the result read by a read_committed
//!    consumer (the query is caught up by then: this is latency, not backlog);
//! 5. restarts the server of each windowed EMIT CHANGES query after that (SIGTERM), and of
//!    a stateless query, and reports how long until a new event's result comes out.
//!
//! Engine-only mode (`--engine-only`): the same plans fed by an in-process generator with
//! Arrow batches of 4096 rows, no Kafka and no JSON, results counted and dropped, on one
//! thread; and the bytes per (key, window) of a COUNT+SUM TUMBLE at 100,000 keys (counted from
//! its data structures, and resident).
//!
//! ```sh
//! scripts/bench                    # builds in release, starts Kafka, runs both modes
//! throughput [--engine-only] [--events N] [--only q1,q2] [--latency-rate N] [--latency-seconds S]
//!            [--runs N]               # runs of each query against Kafka; its row shows the fastest
//!            [--set property=value]   # request properties of the queries, e.g. commit.interval.ms
//! ```

mod engine;
mod kafka;
mod raw;
mod workload;

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

use workload::{queries, Source};

/// Resident memory of process `pid` in MB.
pub fn rss_mb(pid: u32) -> f64 {
    sluice_bench::proc_mb(pid, "VmRSS:")
}

/// Print the rates of `passes` (rate, CPU) after `what`, and return the fastest.
fn fastest_pass(what: &str, passes: Vec<(f64, f64)>) -> (f64, f64) {
    let rates: Vec<String> = passes
        .iter()
        .map(|(rate, _)| format!("{rate:.0}"))
        .collect();
    println!("{what} {}", rates.join(", "));
    passes
        .into_iter()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .expect("at least one pass")
}

struct Args {
    engine_only: bool,
    /// Internal: measure state size in this fresh process and print "groups bytes".
    state_size: bool,
    events: Option<usize>,
    only: Option<Vec<String>>,
    latency_rate: u64,
    latency_seconds: u64,
    properties: Vec<(String, String)>,
    /// Runs of each query against Kafka; its row shows the fastest, as the raw rate is
    /// the fastest of its passes.
    runs: usize,
}

fn args() -> Result<Args> {
    let mut args = Args {
        engine_only: false,
        state_size: false,
        events: None,
        only: None,
        latency_rate: 10_000,
        latency_seconds: 5,
        properties: vec![],
        runs: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--engine-only" => args.engine_only = true,
            "--state-size" => args.state_size = true,
            "--events" => args.events = Some(value()?.replace('_', "").parse()?),
            "--only" => {
                args.only = Some(value()?.split(',').map(str::to_string).collect());
            }
            "--latency-rate" => args.latency_rate = value()?.parse()?,
            "--latency-seconds" => args.latency_seconds = value()?.parse()?,
            "--runs" => args.runs = value()?.parse::<usize>()?.max(1),
            "--set" => {
                let v = value()?;
                let (k, v) = v.split_once('=').context("--set takes key=value")?;
                args.properties.push((k.to_string(), v.to_string()));
            }
            "-h" | "--help" => {
                println!(
                    "throughput [--engine-only] [--events N] [--only q1,q2] \
                     [--latency-rate N] [--latency-seconds S] [--runs N] [--set property=value]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}; see --help"),
        }
    }
    Ok(args)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "{} cores ({cpu}), {:.0} GiB",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kafka::proc_meminfo_gib()
    )
}

/// Passes of the raw consumer over each topic; the fastest is the raw rate.
const RAW_PASSES: usize = 3;

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let selected: Vec<_> = queries()
        .into_iter()
        .filter(|q| {
            args.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|n| n == q.name))
        })
        .collect();
    if args.state_size {
        let (groups, resident, counted) = engine::state_bytes_per_group(1_764_000_000_000)?;
        println!("{groups} {resident:.1} {counted:.1}");
        return Ok(());
    }
    println!("machine: {}", machine());
    if args.engine_only {
        return engine_only(&args, &selected);
    }
    let bootstrap = sluice_bench::broker()?;
    let sluice = sluice_bench::sluice_beside_me("cargo build --release -p sluice-cli")?;
    let events = args.events.unwrap_or(2_000_000);
    let run = kafka::now_ms().to_string();
    let log = std::env::temp_dir().join(format!("sluice-bench-{run}.log"));
    println!("server logs: {}", log.display());
    let bench = kafka::KafkaBench {
        bootstrap: bootstrap.clone(),
        sluice,
        run,
        events,
        latency_seconds: args.latency_seconds,
        latency_rate: args.latency_rate,
        log,
        properties: args.properties.clone(),
    };
    let names: Vec<&str> = queries().iter().map(|q| q.name).collect();
    let deleted = kafka::delete_leftovers(&bootstrap, &names).await?;
    if deleted > 0 {
        println!("deleted {deleted} topics earlier runs left behind");
    }
    let mut topics = HashMap::new();
    let mut raw = HashMap::new();
    let mut pipes = vec![];
    for source in [Source::Fraud, Source::Nexmark] {
        if !selected
            .iter()
            .any(|q| q.source == source && !q.engine_only)
        {
            continue;
        }
        let topic = kafka::preload(&bootstrap, source, events).await?;
        // The fastest of a few passes: the raw rate moves by a third from one pass to the
        // next on a shared machine, and a slow pass would flatter the ratios.
        let mut fastest = vec![];
        for mode in [raw::RawMode::Poll, raw::RawMode::Batch] {
            let mut passes = vec![];
            for _ in 0..RAW_PASSES {
                let (b, t) = (bootstrap.clone(), topic.clone());
                passes.push(
                    tokio::task::spawn_blocking(move || raw::raw_rate(&b, &t, events, mode))
                        .await??,
                );
            }
            fastest.push(fastest_pass(
                &format!("{topic}: librdkafka consumes ({mode:?}), messages/s:"),
                passes,
            ));
        }
        if source == Source::Fraud {
            // The ceiling of a query's Kafka work: reading and writing as a query does,
            // with no engine. A windowed query writes about one record in two.
            for every in [1, 2] {
                let mut passes = vec![];
                for _ in 0..RAW_PASSES {
                    passes.push(raw::raw_pipe(&bootstrap, &topic, events, every).await?);
                }
                let what =
                    format!("{topic}: librdkafka reads and writes one in {every}, records read/s:");
                pipes.push((every, fastest_pass(&what, passes)));
            }
        }
        topics.insert(source, topic);
        raw.insert(source, (fastest[0], fastest[1]));
    }
    println!(
        "\n{events} events per query; latency: {} events/s for {} s; properties: {:?}\n",
        args.latency_rate, args.latency_seconds, args.properties
    );
    println!("| query | events/s | ratio to raw | ratio to batch | CPU (µs/event) | p50 latency (ms) | p99 latency (ms) | latency rows | peak RSS (MB) | results / event | changelog / event |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (source, ((poll, poll_cpu), (batch, batch_cpu))) in &raw {
        println!(
            "| raw librdkafka consume ({}) | {poll:.0} | 1.00 | {:.2} | {poll_cpu:.2} | | | | | | |",
            source.name(),
            poll / batch
        );
        println!(
            "| raw librdkafka batch consume ({}) | {batch:.0} | {:.2} | 1.00 | {batch_cpu:.2} | | | | | | |",
            source.name(),
            batch / poll
        );
    }
    if let Some(((poll, _), (batch, _))) = raw.get(&Source::Fraud) {
        for (every, (rate, cpu)) in &pipes {
            println!(
                "| raw librdkafka read and write 1 in {every}, transactions (fraud) | {rate:.0} | {:.2} | {:.2} | {cpu:.2} | | | | | {:.2} | |",
                rate / poll,
                rate / batch,
                1.0 / *every as f64
            );
        }
    }
    let mut restarts = vec![];
    let mut spreads = vec![];
    for q in selected.iter().filter(|q| !q.engine_only) {
        let mut runs = vec![];
        for nth in 0..args.runs {
            let r = bench.run_query(q, &topics[&q.source], nth).await?;
            if let Some(ms) = r.restart_ms {
                restarts.push((q.name, ms));
            }
            // Its sink, changelog and command topic: gigabytes, not needed again.
            kafka::delete_leftovers(&bootstrap, &names).await?;
            runs.push(r);
        }
        if runs.len() > 1 {
            let rates: Vec<String> = runs
                .iter()
                .map(|r| format!("{:.0}", r.events_per_s))
                .collect();
            spreads.push((q.name, rates.join(", ")));
        }
        let r = runs
            .into_iter()
            .max_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s))
            .expect("at least one run");
        let (p50, p99, n) = r
            .latency
            .map_or(("–".to_string(), "–".to_string(), 0), |(a, b, n)| {
                (format!("{a:.0}"), format!("{b:.0}"), n)
            });
        let ((poll, _), (batch, _)) = raw[&q.source];
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {p50} | {p99} | {n} | {:.0} | {:.2} | {:.2} |",
            q.name,
            r.events_per_s,
            r.events_per_s / poll,
            r.events_per_s / batch,
            r.cpu_us_per_event,
            r.peak_rss_mb,
            r.results_per_event,
            r.changelog_per_event
        );
    }
    for (name, rates) in spreads {
        println!("\n{name}, events/s of each of its runs (the table shows the fastest): {rates}");
    }
    for (name, ms) in restarts {
        println!(
            "\nrestart of {name} (its server stopped with SIGTERM after its run, started again): \
             a new event's result {ms:.0} ms after the server was started"
        );
    }
    if let Some(topic) = topics.get(&Source::Fraud) {
        let (answering, running) = bench.startup(topic).await?;
        kafka::delete_leftovers(&bootstrap, &names).await?;
        println!(
            "\nrestart: the REST API answered {answering:.0} ms after the server was started, \
             and its persistent query wrote a new event's result {running:.0} ms after it"
        );
    }
    Ok(())
}

fn engine_only(args: &Args, selected: &[workload::BenchQuery]) -> Result<()> {
    let events = args.events.unwrap_or(5_000_000);
    let first_ts = 1_764_000_000_000;
    println!("\nengine only: {events} events per query, batches of 4096 rows, one thread\n");
    println!("| query | events/s | result rows | peak groups held |");
    println!("|---|---:|---:|---:|");
    let mut inputs: HashMap<Source, engine::Input> = HashMap::new();
    for q in selected {
        let input = match inputs.entry(q.source) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(engine::input(q, events, 4096, first_ts)?)
            }
        };
        let r = engine::run(q, input)?;
        println!(
            "| {} | {:.0} | {} | {} |",
            q.name,
            r.events as f64 / r.seconds,
            r.rows_out,
            r.peak_groups
        );
    }
    // In a fresh process: memory this one freed would be reused and hide the growth.
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("--state-size")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace();
    let mut number = || fields.next().and_then(|b| b.parse::<f64>().ok());
    let (Some(groups), Some(resident), Some(counted)) = (number(), number(), number()) else {
        bail!(
            "the state-size run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    println!(
        "\nstate of a COUNT+SUM TUMBLE holding {groups} groups: {counted:.0} bytes per (key, window) \
         held by its data structures (counted from their capacities), {resident:.0} resident \
         (growth of the process's memory; an upper bound)"
    );
    Ok(())
}

//! `sluice demo`: the embedded broker, a generator of realistic card transactions, and
//! `queries/fraud_detection.sql` running on them. Alerts are printed as they arrive.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use sluice_server::engine::RequestProperties;
use sluice_server::{Server, ServerConfig};
use tokio::net::TcpListener;

const FRAUD_SQL: &str = include_str!("../../../queries/fraud_detection.sql");

/// Arguments of `sluice demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Kafka bootstrap servers; without it the embedded broker is used.
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// Address of the REST API.
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    /// Transactions per second.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let server = Server::start(ServerConfig {
        bootstrap_servers: args.bootstrap_servers.clone(),
        state_dir: std::env::temp_dir().join("sluice-demo-state"),
        service_id: "demo_".to_string(),
        ..ServerConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::announce_broker(&server);
    let bootstrap = server.bootstrap_servers().to_string();
    let listener = TcpListener::bind(args.listen).await.with_context(|| {
        format!(
            "cannot listen on {}; pass --listen 127.0.0.1:PORT",
            args.listen
        )
    })?;
    let address = listener.local_addr()?;

    let engine = server.engine();
    let props = RequestProperties {
        auto_offset_reset: "earliest".to_string(),
        idle_timeout_ms: None,
        processing_guarantee: None,
        commit_interval_ms: None,
    };
    engine
        .lock()
        .await
        .execute(FRAUD_SQL, &props)
        .await
        .map_err(|e| anyhow::anyhow!("the demo queries failed: {e}"))?;

    let http = tokio::spawn(server.serve(listener, crate::shutdown_signal()));
    let generator = tokio::spawn(generate(bootstrap.clone(), args.rate));
    let watcher = tokio::spawn(watch_alerts(bootstrap.clone()));

    println!();
    println!("Sluice demo: card transactions -> fraud alerts");
    println!("  broker (in-memory unless --bootstrap-servers): {bootstrap}");
    println!("  REST API: http://{address}");
    println!();
    println!("  running queries:   curl -s -X POST http://{address}/ksql -d '{{\"ksql\":\"SHOW QUERIES;\"}}'");
    println!("  alert table:       curl -s -X POST http://{address}/ksql -d '{{\"ksql\":\"DESCRIBE FRAUD_ALERTS;\"}}'");
    println!("  raw alert records: kcat -b {bootstrap} -t alerts -C");
    println!("  pull query:        curl -s -X POST http://{address}/query-stream -d '{{\"sql\":\"SELECT * FROM FRAUD_ALERTS ORDER BY total_amount DESC LIMIT 5;\"}}'");
    println!("  push query:        curl -s -N -X POST http://{address}/query-stream -d '{{\"sql\":\"SELECT card_id, amount FROM transactions WHERE amount > 1000 EMIT CHANGES;\"}}'");
    println!("  (Ctrl-C to stop)");
    println!();

    if args.seconds > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.seconds)) => {}
            _ = http => {}
        }
    } else {
        let _ = http.await;
    }
    generator.abort();
    watcher.abort();
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Produce transactions: many ordinary cards, and now and then a stolen card used in
/// a burst across countries.
async fn generate(bootstrap: String, rate: u32) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .create()?;
    let merchants = [
        "Grocer",
        "Coffee Bar",
        "Fuel Station",
        "Bookshop",
        "Electronics Hub",
        "Airline",
        "Hotel",
        "Pharmacy",
        "Online Market",
        "Jeweller",
    ];
    let countries = ["DE", "FR", "NL", "US", "GB", "ES", "BR", "SG"];
    let mut rng = StdRng::from_os_rng();
    let pause = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut n: u64 = 0;
    let mut burst: Option<(String, u32)> = None;
    loop {
        n += 1;
        let (card, country, amount) = match burst.take() {
            Some((card, left)) => {
                if left > 1 {
                    burst = Some((card.clone(), left - 1));
                }
                let country = countries[rng.random_range(0..countries.len())];
                (card, country, rng.random_range(400.0..2500.0))
            }
            None => {
                if rng.random_ratio(1, 150) {
                    let card = format!("card-{:04}", rng.random_range(0..5000));
                    burst = Some((card, rng.random_range(5..9)));
                }
                let card = format!("card-{:04}", rng.random_range(0..5000));
                let amount: f64 = (rng.random_range(1.0f64..6.0)).exp();
                (card, "DE", (amount * 100.0).round() / 100.0)
            }
        };
        let value = json!({
            "tx_id": format!("tx-{n}"),
            "card_id": card,
            "merchant": merchants[rng.random_range(0..merchants.len())],
            "amount": (amount * 100.0_f64).round() / 100.0,
            "country": country,
            "ts": now_ms(),
        })
        .to_string();
        let record = FutureRecord::to("transactions").key(&card).payload(&value);
        if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
            tracing::warn!(error = %e, "the generator could not produce");
        }
        tokio::time::sleep(pause).await;
    }
}

/// Print each alert update from the `alerts` topic (FRAUD_ALERTS); tombstones are skipped.
async fn watch_alerts(bootstrap: String) -> anyhow::Result<()> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "sluice-demo-watcher")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&["alerts"])?;
    loop {
        let m = match consumer.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "watcher");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let Some(Ok(v)) = m.payload().map(serde_json::from_slice::<Value>) else {
            continue;
        };
        println!(
            "ALERT card={} session={}..{} ({} s) transactions={} total={:.2} countries={} last_merchant={}",
            v["card_id"].as_str().unwrap_or("?"),
            v["session_start"],
            v["session_end"],
            (v["session_end"].as_i64().unwrap_or(0) - v["session_start"].as_i64().unwrap_or(0)) / 1000,
            v["tx_count"],
            v["total_amount"].as_f64().unwrap_or(0.0),
            v["countries"],
            v["last_merchant"].as_str().unwrap_or("?"),
        );
    }
}

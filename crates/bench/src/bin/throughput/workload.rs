//! What the benchmark runs: its two event streams (fraud-style card transactions and
//! Nexmark bids), each as JSON for Kafka and as Arrow batches for the engine-only mode,
//! and its queries.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
};
use datafusion::arrow::datatypes::SchemaRef;
use nexmark::config::NexmarkConfig;
use nexmark::event::{Bid, EventType};
use nexmark::EventGenerator;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Distinct keys of the fraud stream (`card_id`).
pub const KEYS: u64 = 100_000;
/// Event time between two fraud events: 10,000 events per second of event time, so a
/// 1-minute window holds 600,000 events, six per key.
pub const FRAUD_STEP_US: i64 = 100;

/// The two input streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Fraud,
    Nexmark,
}

impl Source {
    /// The `CREATE STREAM` of this source over `topic`.
    pub fn ddl(self, topic: &str) -> String {
        match self {
            Source::Fraud => format!(
                "CREATE STREAM tx (card_id VARCHAR, merchant VARCHAR, amount DOUBLE, \
                 country VARCHAR, device VARCHAR, ts BIGINT) \
                 WITH (KAFKA_TOPIC='{topic}', VALUE_FORMAT='JSON', TIMESTAMP='ts');"
            ),
            Source::Nexmark => format!(
                "CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, \
                 url VARCHAR, date_time BIGINT, extra VARCHAR) \
                 WITH (KAFKA_TOPIC='{topic}', VALUE_FORMAT='JSON', TIMESTAMP='date_time');"
            ),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Source::Fraud => "fraud",
            Source::Nexmark => "nexmark",
        }
    }
}

/// One benchmark query.
#[derive(Debug, Clone)]
pub struct BenchQuery {
    pub name: &'static str,
    pub source: Source,
    /// `CREATE STREAM|TABLE {name} AS SELECT …`, with `{name}` to fill in.
    pub sql: String,
    /// Only in the engine-only mode (the issue's engine targets, exactly as stated).
    pub engine_only: bool,
}

impl BenchQuery {
    /// The statement, creating `name`.
    pub fn statement(&self, name: &str) -> String {
        self.sql.replace("{name}", name)
    }
}

const TUMBLE: &str = "WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 2 SECONDS)";
const HOP: &str = "WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 20 SECONDS, GRACE PERIOD 2 SECONDS)";
const SESSION: &str = "WINDOW SESSION (30 SECONDS, GRACE PERIOD 2 SECONDS)";

fn fraud_agg(window: &str, emit: &str) -> String {
    format!(
        "CREATE TABLE {{name}} AS SELECT card_id, COUNT(*) AS n, SUM(amount) AS total, \
         MAX(ts) AS last_ts FROM tx {window} GROUP BY card_id EMIT {emit};"
    )
}

/// Every query, in the order they run.
pub fn queries() -> Vec<BenchQuery> {
    let q = |name, source, sql: &str, engine_only| BenchQuery {
        name,
        source,
        sql: sql.to_string(),
        engine_only,
    };
    vec![
        q(
            "stateless",
            Source::Fraud,
            "CREATE STREAM {name} AS SELECT card_id, amount, country, ts FROM tx \
             WHERE amount > 100.0;",
            false,
        ),
        q("tumble_changes", Source::Fraud, &fraud_agg(TUMBLE, "CHANGES"), false),
        q("tumble_final", Source::Fraud, &fraud_agg(TUMBLE, "FINAL"), false),
        q("hop_changes", Source::Fraud, &fraud_agg(HOP, "CHANGES"), false),
        q("hop_final", Source::Fraud, &fraud_agg(HOP, "FINAL"), false),
        q("session_changes", Source::Fraud, &fraud_agg(SESSION, "CHANGES"), false),
        q("session_final", Source::Fraud, &fraud_agg(SESSION, "FINAL"), false),
        q(
            "tumble_count_sum",
            Source::Fraud,
            "CREATE TABLE {name} AS SELECT card_id, COUNT(*) AS n, SUM(amount) AS total FROM tx \
             WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 2 SECONDS) GROUP BY card_id EMIT CHANGES;",
            true,
        ),
        q(
            "session_count_sum",
            Source::Fraud,
            "CREATE TABLE {name} AS SELECT card_id, COUNT(*) AS n, SUM(amount) AS total FROM tx \
             WINDOW SESSION (30 SECONDS, GRACE PERIOD 2 SECONDS) GROUP BY card_id EMIT CHANGES;",
            true,
        ),
        q(
            "nexmark_q0",
            Source::Nexmark,
            "CREATE STREAM {name} AS SELECT auction, bidder, price, date_time, extra FROM bid;",
            false,
        ),
        q(
            "nexmark_q1",
            Source::Nexmark,
            "CREATE STREAM {name} AS SELECT auction, bidder, 0.908 * price AS price, date_time, \
             extra FROM bid;",
            false,
        ),
        q(
            "nexmark_q2",
            Source::Nexmark,
            "CREATE STREAM {name} AS SELECT auction, price, date_time FROM bid \
             WHERE auction % 123 = 0;",
            false,
        ),
        q(
            "nexmark_q5",
            Source::Nexmark,
            "CREATE TABLE {name} AS SELECT auction, COUNT(*) AS num, MAX(date_time) AS last_ts \
             FROM bid WINDOW HOPPING (SIZE 10 SECONDS, ADVANCE BY 2 SECONDS) \
             GROUP BY auction EMIT FINAL;",
            false,
        ),
        q(
            "nexmark_q7",
            Source::Nexmark,
            "CREATE TABLE {name} AS SELECT channel, MAX(price) AS maxprice, \
             MAX(date_time) AS last_ts FROM bid WINDOW TUMBLING (SIZE 10 SECONDS) \
             GROUP BY channel EMIT FINAL;",
            false,
        ),
        q(
            "nexmark_q11",
            Source::Nexmark,
            "CREATE TABLE {name} AS SELECT bidder, COUNT(*) AS bid_count, \
             MAX(date_time) AS last_ts FROM bid WINDOW SESSION (10 SECONDS) \
             GROUP BY bidder EMIT FINAL;",
            false,
        ),
    ]
}

/// One fraud event.
pub struct FraudEvent {
    pub card: u64,
    pub merchant: u32,
    pub amount_cents: u32,
    pub country: &'static str,
    pub device: &'static str,
    pub ts: i64,
}

const COUNTRIES: [&str; 8] = ["DE", "FR", "US", "GB", "NL", "ES", "IT", "PL"];
const DEVICES: [&str; 4] = ["ios-17.2", "android-14", "web-chrome", "web-safari"];

/// Deterministic fraud events; event `i` happens at `first_ts + i * 100 µs`, with keys
/// drawn uniformly from [`KEYS`].
pub struct FraudGenerator {
    rng: SmallRng,
    i: i64,
    first_ts_us: i64,
}

impl FraudGenerator {
    pub fn new(first_ts_ms: i64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(7),
            i: 0,
            first_ts_us: first_ts_ms * 1000,
        }
    }

    pub fn next_event(&mut self) -> FraudEvent {
        let ts = (self.first_ts_us + self.i * FRAUD_STEP_US) / 1000;
        self.i += 1;
        FraudEvent {
            card: self.rng.random_range(0..KEYS),
            merchant: self.rng.random_range(0..5000),
            amount_cents: self.rng.random_range(100..50_000),
            country: COUNTRIES[self.rng.random_range(0..COUNTRIES.len())],
            device: DEVICES[self.rng.random_range(0..DEVICES.len())],
            ts,
        }
    }
}

impl FraudEvent {
    /// About 120 bytes of JSON.
    pub fn json(&self) -> Vec<u8> {
        format!(
            r#"{{"card_id":"card-{:06}","merchant":"m-{:04}","amount":{}.{:02},"country":"{}","device":"{}","ts":{}}}"#,
            self.card,
            self.merchant,
            self.amount_cents / 100,
            self.amount_cents % 100,
            self.country,
            self.device,
            self.ts
        )
        .into_bytes()
    }

    pub fn key(&self) -> String {
        format!("card-{:06}", self.card)
    }
}

/// Nexmark bids (the queries here read only bids), from the `nexmark` crate's generator
/// with its default configuration, event times shifted to start at `first_ts_ms`.
pub struct BidGenerator {
    inner: EventGenerator,
    shift: i64,
}

impl BidGenerator {
    pub fn new(first_ts_ms: i64) -> Self {
        let inner = EventGenerator::new(NexmarkConfig::default()).with_type_filter(EventType::Bid);
        let base = inner.timestamp() as i64;
        Self {
            inner,
            shift: first_ts_ms - base,
        }
    }

    pub fn next_bid(&mut self) -> Bid {
        loop {
            if let Some(nexmark::event::Event::Bid(mut bid)) = self.inner.next() {
                bid.date_time = (bid.date_time as i64 + self.shift) as u64;
                return bid;
            }
        }
    }
}

/// A bid as JSON (about 200 bytes with the generator's `extra`).
pub fn bid_json(bid: &Bid) -> Vec<u8> {
    serde_json::json!({
        "auction": bid.auction, "bidder": bid.bidder, "price": bid.price,
        "channel": bid.channel, "url": bid.url, "date_time": bid.date_time, "extra": bid.extra,
    })
    .to_string()
    .into_bytes()
}

/// Arrow batches of `rows` rows with the value schema of `source`, straight from the
/// generator (no JSON), and each row's event time.
pub fn arrow_batches(
    source: Source,
    schema: &SchemaRef,
    events: usize,
    rows: usize,
    first_ts_ms: i64,
) -> Vec<(RecordBatch, Vec<i64>)> {
    let mut out = vec![];
    let mut fraud = FraudGenerator::new(first_ts_ms);
    let mut bids = BidGenerator::new(first_ts_ms);
    let mut left = events;
    while left > 0 {
        let n = left.min(rows);
        left -= n;
        let mut times = Vec::with_capacity(n);
        let columns: Vec<ArrayRef> = match source {
            Source::Fraud => {
                let mut card = StringBuilder::with_capacity(n, n * 11);
                let mut merchant = StringBuilder::with_capacity(n, n * 6);
                let mut amount = Float64Builder::with_capacity(n);
                let mut country = StringBuilder::with_capacity(n, n * 2);
                let mut device = StringBuilder::with_capacity(n, n * 10);
                let mut ts = Int64Builder::with_capacity(n);
                for _ in 0..n {
                    let e = fraud.next_event();
                    card.append_value(format!("card-{:06}", e.card));
                    merchant.append_value(format!("m-{:04}", e.merchant));
                    amount.append_value(f64::from(e.amount_cents) / 100.0);
                    country.append_value(e.country);
                    device.append_value(e.device);
                    ts.append_value(e.ts);
                    times.push(e.ts);
                }
                vec![
                    Arc::new(card.finish()),
                    Arc::new(merchant.finish()),
                    Arc::new(amount.finish()),
                    Arc::new(country.finish()),
                    Arc::new(device.finish()),
                    Arc::new(ts.finish()),
                ]
            }
            Source::Nexmark => {
                let mut auction = Int64Builder::with_capacity(n);
                let mut bidder = Int64Builder::with_capacity(n);
                let mut price = Int64Builder::with_capacity(n);
                let mut channel = StringBuilder::with_capacity(n, n * 8);
                let mut url = StringBuilder::with_capacity(n, n * 40);
                let mut date_time = Int64Builder::with_capacity(n);
                let mut extra = StringBuilder::with_capacity(n, n * 70);
                for _ in 0..n {
                    let b = bids.next_bid();
                    auction.append_value(b.auction as i64);
                    bidder.append_value(b.bidder as i64);
                    price.append_value(b.price as i64);
                    channel.append_value(&b.channel);
                    url.append_value(&b.url);
                    date_time.append_value(b.date_time as i64);
                    extra.append_value(&b.extra);
                    times.push(b.date_time as i64);
                }
                vec![
                    Arc::new(auction.finish()),
                    Arc::new(bidder.finish()),
                    Arc::new(price.finish()),
                    Arc::new(channel.finish()),
                    Arc::new(url.finish()),
                    Arc::new(date_time.finish()),
                    Arc::new(extra.finish()),
                ]
            }
        };
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("the source schema");
        out.push((batch, times));
    }
    out
}

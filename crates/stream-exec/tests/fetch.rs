//! The batch path of a query's reading thread, `FetchQueue`, against the embedded broker
//! (librdkafka's mock cluster): partitions forwarded to it deliver their records in
//! batches, in order, with their timestamps and payloads (a batch's payloads share one
//! buffer; tombstones and empty payloads among them); a partition assigned again (as
//! after a rebalance, when librdkafka has dropped the forwarding) delivers again once it
//! is forwarded again, which is what the consumer's context does before each assignment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_stream_exec::native::FetchQueue;
use sluice_stream_exec::{EmbeddedBroker, RawRecord};

const TOPIC: &str = "fetch_batches";
const RECORDS: i64 = 3000;

/// Record `i`'s payload: none every 7th record, empty every 11th, else text.
fn payload(i: i64) -> Option<String> {
    match i {
        i if i % 7 == 3 => None,
        i if i % 11 == 5 => Some(String::new()),
        i => Some(format!("record {i}")),
    }
}

fn produce(bootstrap: &str) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    for i in 0..RECORDS {
        let payload = payload(i);
        let partition = i32::try_from(i % 2).expect("0 or 1");
        let mut record = BaseRecord::<(), String>::to(TOPIC)
            .partition(partition)
            .timestamp(1_700_000_000_000 + i);
        if let Some(payload) = &payload {
            record = record.payload(payload);
        }
        producer.send(record).map_err(|(e, _)| e).expect("queued");
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");
}

fn assign(consumer: &BaseConsumer, partitions: &[(i32, Offset)]) {
    let mut list = TopicPartitionList::new();
    for &(p, offset) in partitions {
        list.add_partition_offset(TOPIC, p, offset).expect("listed");
    }
    consumer.assign(&list).expect("assigned");
}

/// Take from `fetch` until `n` records came (or 20 s passed); the largest take, too.
fn take(fetch: &FetchQueue, n: usize) -> (Vec<RawRecord>, usize) {
    let (mut records, mut largest) = (vec![], 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while records.len() < n && Instant::now() < deadline {
        let taken = fetch.take(Duration::from_millis(100), 700, &mut |r| {
            records.push(r.expect("no consumer error"));
        });
        largest = largest.max(taken);
    }
    (records, largest)
}

fn offsets(records: &[RawRecord], partition: i32) -> Vec<i64> {
    records
        .iter()
        .filter(|r| r.partition == partition)
        .map(|r| r.offset)
        .collect()
}

#[test]
fn forwarded_partitions_deliver_in_batches_and_again_after_reassignment() {
    let broker = EmbeddedBroker::start().expect("embedded broker");
    broker.create_topic(TOPIC, 2).expect("topic");
    produce(broker.bootstrap_servers());
    let consumer: Arc<BaseConsumer> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("group.id", "fetch_test")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer"),
    );
    let fetch = FetchQueue::new(consumer.clone()).expect("queue");
    assert!(fetch.forward(TOPIC, 0) && fetch.forward(TOPIC, 1));
    assign(&consumer, &[(0, Offset::Beginning), (1, Offset::Beginning)]);

    let (records, largest) = take(&fetch, 3000);
    assert_eq!(records.len(), 3000);
    assert!(largest > 1, "records came one at a time");
    let half: Vec<i64> = (0..RECORDS / 2).collect();
    assert_eq!(offsets(&records, 0), half);
    assert_eq!(offsets(&records, 1), half);
    for r in &records {
        let i = r.offset * 2 + i64::from(r.partition);
        assert_eq!(r.value.as_deref(), payload(i).as_deref().map(str::as_bytes));
        assert_eq!(r.timestamp_ms, Some(1_700_000_000_000 + i));
    }
    // Nothing is left, and a take without waiting says so at once.
    let started = Instant::now();
    assert_eq!(fetch.take(Duration::ZERO, 10, &mut |_| {}), 0);
    assert!(started.elapsed() < Duration::from_secs(1));

    // A revocation stops the partitions' fetching (librdkafka drops the forwarding then);
    // forwarded again before it is assigned again, a partition delivers again.
    consumer.unassign().expect("unassigned");
    std::thread::sleep(Duration::from_millis(500));
    assert!(fetch.forward(TOPIC, 0));
    assign(&consumer, &[(0, Offset::Offset(1000))]);
    let (again, _) = take(&fetch, 500);
    assert_eq!(offsets(&again, 0), (1000..1500).collect::<Vec<i64>>());
    assert_eq!(again.len(), 500);
}

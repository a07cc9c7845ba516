//! What a query reads back from real Kafka topics when it starts: its state changelog
//! from the last snapshot on, read backwards from the end in growing stretches (the dead
//! records before the snapshot, which compaction leaves until their segment closes, are
//! not read); without a snapshot, all of it.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_e2e::{bootstrap, ordered_producer, unique};
use sluice_stream_exec::changelog::{ensure_changelog, read_changelog, read_topic, KeyedRecord};
use sluice_stream_exec::frames::{last_snapshot, Frames};
use sluice_stream_exec::state::StateChange;

/// `n` records of one entry each (as at-least-once writes them), over 50 keys; `from`
/// numbers the values.
fn entries(from: usize, n: usize) -> Vec<StateChange> {
    (from..from + n)
        .map(|i| StateChange {
            key: format!("0:{{\"k\":{}}}", i % 50).into_bytes(),
            value: Some(format!("[{i}]").into_bytes()),
        })
        .collect()
}

fn as_records(changes: &[StateChange]) -> Vec<KeyedRecord> {
    changes
        .iter()
        .map(|c| (c.key.clone(), c.value.clone()))
        .collect()
}

/// Write `changes` to `topic` in order.
async fn write(topic: &str, changes: &[StateChange]) {
    let producer = ordered_producer();
    let mut pending = Vec::with_capacity(changes.len());
    for c in changes {
        let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(topic).key(&c.key);
        if let Some(v) = &c.value {
            record = record.payload(v);
        }
        pending.push(producer.send(record, Duration::from_secs(10)));
    }
    for p in pending {
        p.await.expect("written");
    }
}

#[tokio::test]
async fn a_changelog_is_read_back_from_its_last_snapshot_and_reads_as_a_whole_one() {
    let b = bootstrap();
    let topic = unique("read_back_snapshot");
    ensure_changelog(&b, &topic).await.expect("changelog");
    // Records of one entry each, then a snapshot of the state they make (after
    // tombstones for them), then records of one entry each for longer than the first
    // stretches read back (256 offsets, then 1024 more).
    let mut changes = entries(0, 600);
    let (state, mut frames) = Frames::read_back(as_records(&changes)).expect("read");
    let snapshot: Vec<StateChange> = state
        .into_iter()
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .map(|(key, value)| StateChange {
            key,
            value: Some(value),
        })
        .collect();
    changes.extend(frames.pack_snapshot(&snapshot));
    changes.extend(entries(600, 1500));
    write(&topic, &changes).await;

    let whole = read_topic(&b, &topic).await.expect("read whole");
    assert_eq!(whole, as_records(&changes));
    let at = last_snapshot(&whole).expect("a snapshot");
    assert!(
        whole.len() - at > 1280,
        "the snapshot is {} from the end",
        whole.len() - at
    );
    let read = read_changelog(&b, &topic).await.expect("read back");
    assert_eq!(read, whole[at..].to_vec());
    let (from_snapshot, frames_read) = Frames::read_back(read).expect("from the snapshot");
    let (from_whole, frames_whole) = Frames::read_back(whole).expect("whole");
    assert_eq!(from_snapshot, from_whole);
    assert_eq!(frames_read, frames_whole);
    assert_eq!(from_whole[&b"0:{\"k\":7}"[..]], b"[2057]".to_vec());
}

#[tokio::test]
async fn a_changelog_without_a_snapshot_is_read_back_whole() {
    let b = bootstrap();
    let topic = unique("read_back_no_snapshot");
    ensure_changelog(&b, &topic).await.expect("changelog");
    let changes = entries(0, 2000);
    write(&topic, &changes).await;
    let read = read_changelog(&b, &topic).await.expect("read back");
    assert_eq!(read, as_records(&changes));
    // A changelog that does not exist yet reads as empty.
    let none = read_changelog(&b, &unique("read_back_missing"))
        .await
        .expect("missing");
    assert!(none.is_empty());
}

/// A transactional producer of its own (`id` names it), with a transaction begun.
fn in_transaction(id: &str) -> FutureProducer {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", id)
        .create()
        .expect("producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init");
    producer.begin_transaction().expect("begin");
    producer
}

/// Records of a transaction open when reading back starts are waited for: read when it
/// commits, left out when it aborts. A consumer of committed records is told a partition
/// ends before them; Kafka answers a commit before the markers that end that are written,
/// so a query that read its state back right after its own commit (partitions moved
/// meanwhile, as after a broker outage) lost the last batch's state changes.
#[tokio::test]
async fn reading_back_waits_for_a_transaction_open_when_it_starts() {
    let b = bootstrap();
    for commit in [true, false] {
        for whole in [true, false] {
            let topic = unique("read_back_open_transaction");
            ensure_changelog(&b, &topic).await.expect("changelog");
            let before = entries(0, 3);
            write(&topic, &before).await;
            let producer = in_transaction(&unique("read_back_transaction"));
            let open = entries(3, 2);
            for c in &open {
                let record = FutureRecord::<Vec<u8>, Vec<u8>>::to(&topic)
                    .key(&c.key)
                    .payload(c.value.as_ref().expect("a value"));
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .expect("written");
            }
            let (b2, t2) = (b.clone(), topic.clone());
            let reading = tokio::spawn(async move {
                if whole {
                    read_topic(&b2, &t2).await
                } else {
                    read_changelog(&b2, &t2).await
                }
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(!reading.is_finished(), "read before the transaction ended");
            tokio::task::spawn_blocking(move || {
                if commit {
                    producer.commit_transaction(Duration::from_secs(30))
                } else {
                    producer.abort_transaction(Duration::from_secs(30))
                }
            })
            .await
            .expect("joined")
            .expect("transaction ended");
            let read = reading.await.expect("joined").expect("read back");
            let mut expected = as_records(&before);
            if commit {
                expected.extend(as_records(&open));
            }
            assert_eq!(read, expected, "commit: {commit}, whole topic: {whole}");
        }
    }
}

//! Writing a persistent query's batch: its results to the sink topic and its state
//! changes to the changelog, then its consumer offsets, in one Kafka transaction
//! (exactly-once) or as produce, wait for the acknowledgements, commit (at-least-once).

use futures::future::join_all;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_sql_planner::StreamPlan;

use crate::error::{ExecError, Result};
use crate::json_encoder::encode_rows;
use crate::operator::ChangeBatch;
use crate::query_runner::{
    next_offsets, QueryConfig, QueryConsumer, SLOW_ACKS, TRANSACTION_TIMEOUT,
};
use crate::record::RawRecord;
use crate::state::StateChange;
use crate::stats::QueryStats;

/// What writing a persistent query's batch needs.
pub(crate) struct Delivery<'a> {
    pub(crate) config: &'a QueryConfig,
    pub(crate) plan: &'a StreamPlan,
    pub(crate) changelog: Option<&'a str>,
    pub(crate) stats: &'a QueryStats,
}

impl Delivery<'_> {
    /// Write the results of `records` and the state `changes`, and move the consumer
    /// offsets past `records`: in one transaction (exactly-once), or produce, wait for the
    /// acks, then commit (at-least-once). Then the table's materialization sees the rows.
    /// `false` when the transaction was aborted and the batch must be processed again.
    pub(crate) async fn deliver(
        &self,
        producer: &FutureProducer,
        consumer: &QueryConsumer,
        records: &[RawRecord],
        batches: &[ChangeBatch],
        changes: &[StateChange],
    ) -> Result<bool> {
        let config = self.config;
        let offsets = next_offsets(&self.plan.source.topic, records)?;
        if config.exactly_once {
            transaction(producer, "beginning a transaction", |p| {
                p.begin_transaction()
            })
            .await?;
            if let Err(e) = self.produce(producer, batches, changes).await {
                let _ = transaction(producer, "aborting a transaction", |p| {
                    p.abort_transaction(TRANSACTION_TIMEOUT)
                })
                .await;
                return Err(e);
            }
            let group = consumer.group_metadata().ok_or_else(|| {
                ExecError::internal("query loop", "the consumer has no group metadata")
            })?;
            let committed = transaction(producer, "committing a transaction", move |p| {
                if offsets.count() > 0 {
                    p.send_offsets_to_transaction(&offsets, &group, TRANSACTION_TIMEOUT)?;
                }
                p.commit_transaction(TRANSACTION_TIMEOUT)
            })
            .await;
            match committed {
                Ok(()) => {}
                Err(ExecError::Kafka {
                    source: KafkaError::Transaction(e),
                    ..
                }) if e.txn_requires_abort() => {
                    tracing::warn!(query_id = %config.query_id, error = %e, "transaction aborted; the batch is processed again");
                    transaction(producer, "aborting a transaction", |p| {
                        p.abort_transaction(TRANSACTION_TIMEOUT)
                    })
                    .await?;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        } else {
            self.produce(producer, batches, changes).await?;
            if offsets.count() > 0 {
                if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
                    tracing::warn!(query_id = %config.query_id, error = %e, "offset commit failed; records may be processed again");
                }
            }
        }
        materialize(config, batches)?;
        Ok(true)
    }

    /// Write `batches` to the sink and `changes` to the changelog, and wait until the
    /// broker has them all.
    async fn produce(
        &self,
        producer: &FutureProducer,
        batches: &[ChangeBatch],
        changes: &[StateChange],
    ) -> Result<()> {
        let sink = self.config.sink_topic.as_str();
        let mut deliveries = vec![];
        for batch in batches {
            for row in encode_rows(batch, &self.plan.key_columns)? {
                deliveries.push(send_record(
                    producer,
                    sink,
                    row.key.as_deref(),
                    row.value.as_deref(),
                )?);
            }
        }
        let produced = deliveries.len() as u64;
        if let Some(changelog) = self.changelog {
            for change in changes {
                deliveries.push(send_record(
                    producer,
                    changelog,
                    Some(&change.key),
                    change.value.as_deref(),
                )?);
            }
        }
        let all = join_all(deliveries);
        tokio::pin!(all);
        let delivered = tokio::select! {
            done = &mut all => done,
            _ = tokio::time::sleep(SLOW_ACKS) => {
                // Still waiting: the broker may be gone. Say so while waiting on.
                self.stats.kafka_failed(format!(
                    "no acknowledgement from Kafka for {} s while producing to {sink}",
                    SLOW_ACKS.as_secs()
                ));
                all.await
            }
        };
        for delivery in delivered {
            match delivery {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(ExecError::kafka(format!("producing to {sink}"), e)),
                Err(_) => {
                    return Err(ExecError::kafka(
                        format!("producing to {sink}"),
                        KafkaError::Canceled,
                    ))
                }
            }
        }
        self.stats.add_out(produced);
        Ok(())
    }
}

/// Queue one record for `topic`.
fn send_record(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<rdkafka::producer::DeliveryFuture> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic);
    if let Some(v) = value {
        record = record.payload(v);
    }
    if let Some(k) = key {
        record = record.key(k);
    }
    producer
        .send_result(record)
        .map_err(|(e, _)| ExecError::kafka(format!("producing to {topic}"), e))
}

/// Run a blocking transaction call of librdkafka off the async threads.
pub(crate) async fn transaction(
    producer: &FutureProducer,
    context: &'static str,
    call: impl FnOnce(&FutureProducer) -> rdkafka::error::KafkaResult<()> + Send + 'static,
) -> Result<()> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || call(&producer))
        .await
        .map_err(|_| ExecError::kafka(context, rdkafka::error::KafkaError::Canceled))?
        .map_err(|e| ExecError::kafka(context, e))
}

/// Apply written `batches` to the table's materialization, if it has one.
fn materialize(config: &QueryConfig, batches: &[ChangeBatch]) -> Result<()> {
    match &config.materialized {
        Some(table) if !batches.is_empty() => table.apply(batches),
        _ => Ok(()),
    }
}

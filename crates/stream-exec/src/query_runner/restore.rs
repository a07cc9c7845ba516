//! A query's start: its producer's transactions, its consumer and changelog, the
//! operators' state read back from the changelog, and a table's rows from its topic.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use sluice_sql_planner::StreamPlan;
use tokio::sync::watch;

use super::{retry, Output, QueryConfig};
use crate::changelog::{ensure_changelog, read_topic_each, topic_exists, Changelog};
use crate::consumer::{subscribe, Subscribed};
use crate::delivery::{create_producer, start_producer};
use crate::error::{ExecError, Result};
use crate::frames::StateWriter;
use crate::materialized::{MaterializedTable, TableRestore};
use crate::pipeline::Pipeline;
use crate::stats::QueryStats;

/// Read the rows of `table` back from its topic (the query's sink) as it was when the
/// reading began, retrying Kafka failures.
pub(super) async fn restore_table(
    config: &QueryConfig,
    table: &Arc<MaterializedTable>,
    stats: &QueryStats,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<()> {
    let query_id = config.query_id.as_str();
    let push = |r: &mut TableRestore, key: &[u8], value: Option<&[u8]>| r.push(key, value);
    let Some((restore, _)) = retry(query_id, "reading table rows back", stats, shutdown, || {
        read_topic_each(
            &config.bootstrap_servers,
            &config.sink_topic,
            (table.restore(), push),
        )
    })
    .await?
    else {
        return Ok(());
    };
    let rows = tokio::task::spawn_blocking(move || restore.finish())
        .await
        .map_err(|e| ExecError::internal("reading table rows back", &e.to_string()))??;
    tracing::info!(query_id, rows, sink = %config.sink_topic, "table rows read back");
    Ok(())
}

/// A fresh pipeline over `partitions`, its state read back from `changelog` (by
/// `opened`, if it was opened already), and the writer of its changelog.
pub(super) async fn start_pipeline(
    config: &QueryConfig,
    plan: &StreamPlan,
    partitions: &[i32],
    changelog: Option<&str>,
    opened: Option<Changelog>,
) -> Result<(Pipeline, StateWriter)> {
    let mut pipeline = Pipeline::new(&config.query_id, plan, config.idle_timeout)?;
    let now = std::time::Instant::now();
    pipeline.assign(partitions.iter().copied(), now);
    let mut writer = StateWriter::default();
    if let Some(changelog) = changelog {
        let started = std::time::Instant::now();
        let opened = match opened {
            Some(opened) => opened,
            None => Changelog::open(&config.bootstrap_servers, changelog).await?,
        };
        let records = opened.read().await?;
        let (count, read_ms) = (records.len(), started.elapsed().as_millis() as u64);
        let (state, read) = StateWriter::read_back(records, config.exactly_once)?;
        pipeline.restore(&state, now)?;
        writer = read;
        let restore_ms = started.elapsed().as_millis() as u64 - read_ms;
        tracing::info!(
            query_id = %config.query_id,
            entries = state.len(),
            records = count,
            read_ms,
            restore_ms,
            changelog,
            "state read back"
        );
    }
    Ok((pipeline, writer))
}

/// Start the transactions of a persistent query's producer (see
/// [`start_producer`]), creating a new producer for each attempt after the first;
/// `None` when the query was stopped meanwhile. A push query has nothing to start.
pub(super) async fn start_output(
    config: &QueryConfig,
    stats: &QueryStats,
    shutdown: &mut watch::Receiver<bool>,
    output: &mut Output,
) -> Result<Option<()>> {
    let Output::Topic(producer) = output else {
        return Ok(Some(()));
    };
    let mut created = Some(producer.clone());
    let started = retry(
        &config.query_id,
        "starting transactions",
        stats,
        shutdown,
        || {
            let created = created.take();
            async move {
                let producer = match created {
                    Some(producer) => producer,
                    None => create_producer(config)?,
                };
                start_producer(config, &producer).await?;
                Ok(producer)
            }
        },
    )
    .await?;
    Ok(started.map(|started| {
        let old = std::mem::replace(producer, started);
        tokio::task::spawn_blocking(move || drop(old));
    }))
}

/// Subscribe the query's consumer to its source `topic`, list that topic's partitions
/// and create its `changelog`, if it has one and it does not exist; `None` when the query was
/// stopped meanwhile.
pub(super) async fn subscribe_and_prepare(
    config: &QueryConfig,
    stats: &Arc<QueryStats>,
    shutdown: &mut watch::Receiver<bool>,
    (topic, changelog): (&str, Option<&str>),
) -> Result<Option<(Subscribed, Vec<i32>)>> {
    let query_id = config.query_id.as_str();
    let subscribed = subscribe(config, topic, stats)?;
    let partitions: Vec<i32> = match subscribed
        .consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
    {
        Ok(metadata) => metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect(),
        Err(e) => {
            tracing::warn!(query_id, error = %e, "no partition list; the watermark follows the partitions that deliver");
            vec![]
        }
    };
    // Kafka may be down as the query starts (or restarts after a crash): wait for it.
    if let Some(changelog) = changelog.filter(|c| !topic_exists(&subscribed.consumer, c)) {
        let created = retry(query_id, "creating the changelog", stats, shutdown, || {
            ensure_changelog(&config.bootstrap_servers, changelog)
        })
        .await?;
        if created.is_none() {
            return Ok(None);
        }
    }
    Ok(Some((subscribed, partitions)))
}

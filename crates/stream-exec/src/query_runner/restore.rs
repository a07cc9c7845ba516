//! A query's state at its start: the operators' state read back from its changelog,
//! and a table's rows from its topic.

use std::sync::Arc;

use sluice_sql_planner::StreamPlan;
use tokio::sync::watch;

use super::{retry, QueryConfig};
use crate::changelog::{read_topic_each, Changelog};
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

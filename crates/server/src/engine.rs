//! `Engine`: runs statements. It owns the catalog, the planner and the persistent
//! queries, and answers each statement with a ksqlDB-shaped entity.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use sluice_sql_planner::datafusion::arrow::datatypes::{DataType, Schema};
use sluice_sql_planner::ddl::{declare_sink, declare_source, QuerySink};
use sluice_sql_planner::{
    parse_statements, Catalog, ColumnSpec, ContinuousQuery, PlanError, Properties, QueryPlanner,
    SourceDef, SourceKind, Statement, StreamPlan,
};
use sluice_stream_exec::{run_query, MaterializedTable, QueryConfig, QueryStats};
use tokio::sync::watch;

mod describe;

use describe::fields_json;
pub use describe::sql_type;

use crate::command_log::{Command, CommandLog};
use crate::config::ServerConfig;
use crate::error::{ApiError, QUERY_ENDPOINT};
use crate::query::{PersistentQuery, QueryState};
use crate::topics::Topics;

/// Statement execution state. Callers serialize access (one statement at a time).
pub struct Engine {
    config: ServerConfig,
    topics: Topics,
    planner: QueryPlanner,
    catalog: Catalog,
    queries: BTreeMap<String, PersistentQuery>,
    /// The current rows of each table a CTAS writes, by table name.
    materialized: BTreeMap<String, Arc<MaterializedTable>>,
    /// Where statements that change the catalog are recorded; `None` before first use.
    command_log: Option<CommandLog>,
    sequence: u64,
}

/// What a pull query may read: each materialized table with its catalog entry.
pub type PullSources = BTreeMap<String, (SourceDef, Arc<MaterializedTable>)>;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("service_id", &self.config.service_id)
            .field("queries", &self.queries.len())
            .finish()
    }
}

pub use crate::request_properties::{RequestProperties, IDLE_TIMEOUT_PROPERTY};

impl Engine {
    /// An engine over the cluster behind `topics`.
    pub fn new(config: ServerConfig, topics: Topics) -> Self {
        Self {
            config,
            topics,
            planner: QueryPlanner::new(),
            catalog: Catalog::new(),
            queries: BTreeMap::new(),
            materialized: BTreeMap::new(),
            command_log: None,
            sequence: 0,
        }
    }

    /// The tables pull queries can read, as of now.
    pub fn pull_sources(&self) -> PullSources {
        self.materialized
            .iter()
            .filter_map(|(name, table)| {
                let source = self.catalog.get(name)?.clone();
                Some((name.clone(), (source, table.clone())))
            })
            .collect()
    }

    /// Plan a push query (`SELECT … EMIT CHANGES` without its LIMIT).
    pub fn plan_push(&self, query: &ContinuousQuery) -> Result<StreamPlan, ApiError> {
        Ok(self.planner.plan(&self.catalog, query)?)
    }

    /// How a push query with `props` runs; its id and group are set when it starts.
    pub fn push_config(&self, props: &RequestProperties) -> QueryConfig {
        QueryConfig {
            query_id: String::new(),
            bootstrap_servers: self.topics.bootstrap_servers().to_string(),
            group_id: String::new(),
            sink_topic: String::new(),
            auto_offset_reset: props.auto_offset_reset.clone(),
            idle_timeout: self.idle_timeout(props),
            materialized: None,
            exactly_once: false,
            commit_interval: sluice_stream_exec::query_runner::PUSH_BATCH_WAIT,
        }
    }

    fn idle_timeout(&self, props: &RequestProperties) -> Option<std::time::Duration> {
        match props.idle_timeout_ms {
            Some(0) => None,
            Some(ms) => Some(std::time::Duration::from_millis(ms)),
            None => self.config.idle_timeout,
        }
    }

    /// The topic and value columns of stream `name`, for `/inserts-stream`.
    pub fn insert_target(
        &self,
        name: &str,
    ) -> Result<
        (
            String,
            sluice_sql_planner::datafusion::arrow::datatypes::SchemaRef,
        ),
        ApiError,
    > {
        let source = self.catalog.get(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "stream \"{}\" does not exist",
                name.to_ascii_uppercase()
            ))
        })?;
        if source.kind != SourceKind::Stream {
            return Err(ApiError::bad_request(format!(
                "\"{}\" is a table; /inserts-stream writes rows into streams",
                source.name
            )));
        }
        Ok((source.topic.clone(), source.schema.clone()))
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Topic administration.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The service id.
    pub fn service_id(&self) -> &str {
        &self.config.service_id
    }

    /// Run every statement of `sql`; stops at the first failure, whose error carries the
    /// results of the statements before it.
    pub async fn execute(
        &mut self,
        sql: &str,
        props: &RequestProperties,
    ) -> Result<Vec<Value>, ApiError> {
        // Nothing runs unless every statement parses, as ksqlDB.
        let statements = parse_statements(sql)
            .map_err(|e| ApiError::from(e).in_statement(sql.trim(), vec![]))?;
        let mut entities = Vec::with_capacity(statements.len());
        for parsed in statements {
            match self
                .execute_one(&parsed.text, parsed.statement, props)
                .await
            {
                Ok(entity) => {
                    if let Err(e) = self.record(&parsed.text, &entity, props).await {
                        return Err(e.in_statement(&parsed.text, entities));
                    }
                    entities.push(entity);
                }
                Err(e) => return Err(e.in_statement(&parsed.text, entities)),
            }
        }
        Ok(entities)
    }

    /// Record a statement that changed the catalog or the queries in the command topic.
    async fn record(
        &mut self,
        text: &str,
        entity: &Value,
        props: &RequestProperties,
    ) -> Result<(), ApiError> {
        if entity["@type"] != "currentStatus" {
            return Ok(());
        }
        if self.command_log.is_none() {
            let log = CommandLog::new(self.topics.bootstrap_servers(), &self.config.service_id)?;
            self.topics.create(log.topic(), 1).await?;
            self.command_log = Some(log);
        }
        let command = Command {
            statement: text.to_string(),
            properties: props.to_json(),
            sequence: entity["commandSequenceNumber"]
                .as_u64()
                .unwrap_or(self.sequence),
        };
        match &self.command_log {
            Some(log) => log.append(&command).await,
            None => Ok(()),
        }
    }

    /// Replay the command topic of this service id: the catalog and the persistent queries
    /// of an earlier run come back. Returns how many statements were replayed; one that
    /// fails now is logged and skipped.
    pub async fn restore(&mut self) -> Result<usize, ApiError> {
        let log = CommandLog::new(self.topics.bootstrap_servers(), &self.config.service_id)?;
        if self.topics.partitions(log.topic()).await?.is_none() {
            return Ok(0);
        }
        let commands = log.read_all().await?;
        self.command_log = Some(log);
        let mut replayed = 0;
        for command in commands {
            let props = RequestProperties::from_json(&command.properties)?;
            let statements = match parse_statements(&command.statement) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(statement = %command.statement, error = %e, "recorded statement no longer parses; skipped");
                    continue;
                }
            };
            for parsed in statements {
                // The same sequence number gives each query the same id, hence the same
                // consumer group and its committed offsets.
                self.sequence = command.sequence.saturating_sub(1);
                match self
                    .execute_one(&parsed.text, parsed.statement, &props)
                    .await
                {
                    Ok(_) => replayed += 1,
                    Err(e) => {
                        tracing::warn!(statement = %parsed.text, error = %e, "replaying a recorded statement failed; skipped")
                    }
                }
                self.sequence = self.sequence.max(command.sequence);
            }
        }
        tracing::info!(replayed, "catalog restored from the command topic");
        Ok(replayed)
    }

    async fn execute_one(
        &mut self,
        text: &str,
        statement: Statement,
        props: &RequestProperties,
    ) -> Result<Value, ApiError> {
        match statement {
            Statement::CreateSource {
                kind,
                name,
                if_not_exists,
                columns,
                properties,
            } => {
                self.create_source(text, kind, name, if_not_exists, columns, properties)
                    .await
            }
            Statement::CreateAsSelect {
                kind,
                name,
                if_not_exists,
                properties,
                query,
            } => {
                if if_not_exists && self.catalog.get(&name).is_some() {
                    return Ok(self.status(text, kind, &name, "create", "already exists", None));
                }
                self.create_as_select(text, kind, name, properties, query, props)
                    .await
            }
            Statement::InsertInto { target, query } => {
                self.insert_into(text, target, query, props).await
            }
            Statement::Select(_) => Err(ApiError {
                error_code: QUERY_ENDPOINT,
                ..ApiError::statement(
                    "SELECT statements are not run by /ksql; send push and pull queries to /query",
                )
            }),
            Statement::Print { .. } => Err(ApiError {
                error_code: QUERY_ENDPOINT,
                ..ApiError::statement("PRINT streams records: send it to /query or /query-stream")
            }),
            Statement::Explain(query) => {
                let plan = self.planner.plan(&self.catalog, &query)?;
                Ok(json!({
                    "@type": "queryDescription",
                    "statementText": text,
                    "queryDescription": {
                        "statementText": text,
                        "fields": fields_json(&plan.output_schema),
                        "sources": [plan.source.stream],
                        "executionPlan": plan.to_string(),
                    },
                    "warnings": [],
                }))
            }
            Statement::ShowStreams => Ok(json!({
                "@type": "streams",
                "statementText": text,
                "streams": self.source_list(SourceKind::Stream),
                "warnings": [],
            })),
            Statement::ShowTables => Ok(json!({
                "@type": "tables",
                "statementText": text,
                "tables": self.source_list(SourceKind::Table),
                "warnings": [],
            })),
            Statement::ShowQueries => {
                let queries: Vec<Value> = self
                    .queries
                    .values()
                    .map(|q| {
                        let state = q.state();
                        let mut v = json!({
                            "queryString": q.statement,
                            "sinks": [q.sink],
                            "sinkKafkaTopics": [q.sink_topic],
                            "id": q.id,
                            "statusCount": { state.as_str(): 1 },
                            "queryType": "PERSISTENT",
                            "state": state.as_str(),
                        });
                        if let QueryState::Error(e) = state {
                            v["errorMessage"] = Value::String(e);
                        }
                        v
                    })
                    .collect();
                Ok(json!({
                    "@type": "queries",
                    "statementText": text,
                    "queries": queries,
                    "warnings": [],
                }))
            }
            Statement::Describe { name, extended } => self.describe(text, &name, extended).await,
            Statement::Terminate(target) => {
                let ids: Vec<String> = match target {
                    Some(id) => {
                        if !self.queries.contains_key(&id) {
                            return Err(ApiError::statement(format!(
                                "query \"{id}\" does not exist"
                            )));
                        }
                        vec![id]
                    }
                    None => self.queries.keys().cloned().collect(),
                };
                for id in &ids {
                    if let Some(q) = self.queries.remove(id) {
                        q.stop().await;
                        tracing::info!(query_id = %id, "query terminated");
                    }
                }
                self.sequence += 1;
                Ok(json!({
                    "@type": "currentStatus",
                    "statementText": text,
                    "commandId": format!("terminate/{}/execute", ids.join(",")),
                    "commandStatus": {
                        "status": "SUCCESS",
                        "message": "Query terminated.",
                        "queryId": ids.first(),
                    },
                    "commandSequenceNumber": self.sequence,
                    "warnings": [],
                }))
            }
            Statement::Drop {
                kind,
                name,
                if_exists,
                delete_topic,
            } => {
                let Some(source) = self.catalog.get(&name).cloned() else {
                    if if_exists {
                        return Ok(self.status(text, kind, &name, "drop", "does not exist", None));
                    }
                    return Err(ApiError::statement(format!(
                        "{} \"{name}\" does not exist",
                        kind.as_str().to_lowercase()
                    )));
                };
                if source.kind != kind {
                    return Err(ApiError::statement(format!(
                        "\"{name}\" is a {}, not a {}; use DROP {}",
                        source.kind.as_str().to_lowercase(),
                        kind.as_str().to_lowercase(),
                        source.kind.as_str()
                    )));
                }
                let users: Vec<&str> = self
                    .queries
                    .values()
                    .filter(|q| q.sink == name || q.source == name)
                    .map(|q| q.id.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(ApiError::statement(format!(
                        "cannot drop \"{name}\": queries {} read or write it; terminate them first",
                        users.join(", ")
                    )));
                }
                if delete_topic {
                    self.topics.delete(&source.topic).await?;
                }
                self.catalog.remove(&name);
                self.materialized.remove(&name);
                Ok(self.status(text, kind, &name, "drop", "dropped", None))
            }
        }
    }

    fn status(
        &mut self,
        text: &str,
        kind: SourceKind,
        name: &str,
        action: &str,
        what: &str,
        query_id: Option<&str>,
    ) -> Value {
        self.sequence += 1;
        let noun = match kind {
            SourceKind::Stream => "Stream",
            SourceKind::Table => "Table",
        };
        let message = match query_id {
            Some(id) => format!("Created query with ID {id}"),
            None => format!("{noun} {name} {what}"),
        };
        json!({
            "@type": "currentStatus",
            "statementText": text,
            "commandId": format!("{}/`{name}`/{action}", kind.as_str().to_lowercase()),
            "commandStatus": {
                "status": "SUCCESS",
                "message": message,
                "queryId": query_id,
            },
            "commandSequenceNumber": self.sequence,
            "warnings": [],
        })
    }

    async fn create_source(
        &mut self,
        text: &str,
        kind: SourceKind,
        name: String,
        if_not_exists: bool,
        columns: Vec<ColumnSpec>,
        properties: Properties,
    ) -> Result<Value, ApiError> {
        if let Some(existing) = self.catalog.get(&name) {
            if if_not_exists {
                return Ok(self.status(text, kind, &name, "create", "already exists", None));
            }
            return Err(ApiError::statement(format!(
                "cannot create {} \"{name}\": a {} with that name already exists",
                kind.as_str().to_lowercase(),
                existing.kind.as_str().to_lowercase()
            )));
        }
        let declared = declare_source(kind, &name, &columns, properties, text)?;
        let topic = declared.source.topic.clone();
        match (self.topics.partitions(&topic).await?, declared.partitions) {
            (Some(_), _) => {}
            (None, Some(p)) => self.topics.create(&topic, p).await?,
            (None, None) => {
                return Err(ApiError::statement(format!(
                    "topic \"{topic}\" does not exist; create it, or give PARTITIONS in the WITH clause to have it created"
                )))
            }
        }
        self.catalog.insert(declared.source)?;
        Ok(self.status(text, kind, &name, "create", "created", None))
    }

    async fn create_as_select(
        &mut self,
        text: &str,
        kind: SourceKind,
        name: String,
        properties: Properties,
        query: ContinuousQuery,
        props: &RequestProperties,
    ) -> Result<Value, ApiError> {
        if self.catalog.get(&name).is_some() {
            return Err(ApiError::statement(format!(
                "cannot create {} \"{name}\": a stream or table with that name already exists",
                kind.as_str().to_lowercase()
            )));
        }
        let plan = self.planner.plan(&self.catalog, &query)?;
        let QuerySink { sink, partitions } = declare_sink(kind, &name, properties, &plan, text)?;
        let partitions = match partitions {
            Some(p) => p,
            None => self
                .topics
                .partitions(&plan.source.topic)
                .await?
                .unwrap_or(1),
        };
        let topic = sink.topic.clone();
        if topic == plan.source.topic {
            return Err(ApiError::statement(format!(
                "\"{name}\" would write to topic \"{topic}\", which its query reads; give another KAFKA_TOPIC"
            )));
        }
        // As ksqlDB creates them: a table's topic keeps the latest row of each key (and, for
        // a windowed table, also deletes by age, as a stream's does). A topic that exists
        // keeps its configs. (A table without key columns writes records without a key,
        // which a compacted topic refuses.)
        let keyed = !sink.key_columns.is_empty();
        let policy: &[(&str, &str)] = match (kind, plan.window_retention.is_some()) {
            (SourceKind::Table, false) if keyed => &[("cleanup.policy", "compact")],
            (SourceKind::Table, true) if keyed => &[("cleanup.policy", "compact,delete")],
            _ => &[],
        };
        self.topics.create_with(&topic, partitions, policy).await?;
        let prefix = match kind {
            SourceKind::Stream => "CSAS",
            SourceKind::Table => "CTAS",
        };
        let id = format!("{prefix}_{name}_{}", self.sequence + 1);
        self.catalog.insert(sink)?;
        self.start_query(&id, text, &name, &topic, plan, props)?;
        Ok(self.status(text, kind, &name, "create", "created", Some(&id)))
    }

    async fn insert_into(
        &mut self,
        text: &str,
        target: String,
        query: ContinuousQuery,
        props: &RequestProperties,
    ) -> Result<Value, ApiError> {
        let sink = self.catalog.require(&target)?.clone();
        if sink.kind != SourceKind::Stream {
            return Err(ApiError::statement(format!(
                "INSERT INTO needs a stream; \"{target}\" is a table"
            )));
        }
        let plan = self.planner.plan(&self.catalog, &query)?;
        if plan.source.stream == sink.name {
            return Err(ApiError::statement(format!(
                "INSERT INTO \"{target}\" cannot read from \"{target}\" itself"
            )));
        }
        if plan.aggregates {
            return Err(ApiError::statement("INSERT INTO a stream cannot aggregate"));
        }
        check_same_columns(&sink, &plan)?;
        let id = format!("INSERTQUERY_{}", self.sequence + 1);
        let topic = sink.topic.clone();
        self.start_query(&id, text, &sink.name, &topic, plan, props)?;
        Ok(self.status(
            text,
            SourceKind::Stream,
            &sink.name,
            "insert",
            "inserted",
            Some(&id),
        ))
    }

    fn start_query(
        &mut self,
        id: &str,
        text: &str,
        sink: &str,
        sink_topic: &str,
        plan: StreamPlan,
        props: &RequestProperties,
    ) -> Result<(), ApiError> {
        let stats = Arc::new(QueryStats::default());
        let state = Arc::new(Mutex::new(QueryState::Running));
        let (shutdown, rx) = watch::channel(false);
        let materialized = if plan.aggregates {
            let table = Arc::new(
                MaterializedTable::new(plan.output_schema.clone(), plan.window_retention)
                    .map_err(|e| ApiError::internal(format!("cannot materialize {sink}: {e}")))?,
            );
            self.materialized.insert(sink.to_string(), table.clone());
            Some(table)
        } else {
            None
        };
        let exactly_once = props
            .processing_guarantee
            .unwrap_or(self.config.processing_guarantee)
            == crate::config::ProcessingGuarantee::ExactlyOnceV2;
        let config = QueryConfig {
            query_id: id.to_string(),
            bootstrap_servers: self.topics.bootstrap_servers().to_string(),
            group_id: format!("{}query_{id}", self.config.service_id),
            sink_topic: sink_topic.to_string(),
            auto_offset_reset: props.auto_offset_reset.clone(),
            idle_timeout: self.idle_timeout(props),
            materialized,
            exactly_once,
            commit_interval: match props.commit_interval_ms {
                Some(ms) => std::time::Duration::from_millis(ms),
                None if exactly_once => {
                    sluice_stream_exec::query_runner::EXACTLY_ONCE_COMMIT_INTERVAL
                }
                None => sluice_stream_exec::query_runner::AT_LEAST_ONCE_COMMIT_INTERVAL,
            },
        };
        let source = plan.source.stream.clone();
        let plan_text = plan.to_string();
        let task_stats = stats.clone();
        let task_state = state.clone();
        let query_id = id.to_string();
        let task = tokio::spawn(async move {
            if let Err(e) = run_query(config, plan, task_stats, rx).await {
                tracing::error!(query_id = %query_id, error = %e, "query failed");
                *task_state.lock().unwrap_or_else(|p| p.into_inner()) =
                    QueryState::Error(e.to_string());
            }
        });
        self.queries.insert(
            id.to_string(),
            PersistentQuery {
                id: id.to_string(),
                statement: text.to_string(),
                source,
                sink: sink.to_string(),
                sink_topic: sink_topic.to_string(),
                plan: plan_text,
                stats,
                state,
                shutdown,
                task: Some(task),
            },
        );
        Ok(())
    }

    /// Stop every query (server shutdown).
    pub async fn shutdown(&mut self) {
        let queries = std::mem::take(&mut self.queries);
        for (_, q) in queries {
            q.stop().await;
        }
    }
}

fn check_same_columns(sink: &SourceDef, plan: &StreamPlan) -> Result<(), PlanError> {
    let columns = |schema: &Schema| -> Vec<(String, DataType)> {
        schema
            .fields()
            .iter()
            .map(|f| (f.name().to_ascii_lowercase(), f.data_type().clone()))
            .collect()
    };
    let (want, got) = (columns(&sink.schema), columns(&plan.output_schema));
    if want != got {
        let show = |v: &[(String, DataType)]| {
            v.iter()
                .map(|(n, t)| format!("{n} {}", sql_type(t)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(PlanError::invalid(format!(
            "the query's columns ({}) do not match stream \"{}\" ({})",
            show(&got),
            sink.name,
            show(&want)
        )));
    }
    Ok(())
}

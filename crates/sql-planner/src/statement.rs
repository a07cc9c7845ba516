//! The statements Sluice accepts, as parsed by [`crate::parse_statements`].

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::DataType;
use datafusion::sql::sqlparser::ast::Query;

use crate::catalog::SourceKind;
use crate::error::Position;
use crate::window::WindowSpec;

/// How a windowed aggregation emits results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Emit {
    /// Every update to a result row is sent (a changelog).
    Changes,
    /// One row per window, when the window closes.
    Final,
}

impl Emit {
    /// `CHANGES` or `FINAL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Emit::Changes => "CHANGES",
            Emit::Final => "FINAL",
        }
    }
}

/// A SELECT with Sluice's extensions taken out of it: the window and the emit clause.
#[derive(Debug, Clone)]
pub struct ContinuousQuery {
    /// The standard part, with window columns added to its GROUP BY.
    pub query: Box<Query>,
    /// The window, from `WINDOW …` or from `TUMBLE`/`HOP`/`SESSION` in GROUP BY.
    pub window: Option<WindowSpec>,
    /// The time column named by the function spelling (`TUMBLE(ts, …)`), if any.
    pub window_time_column: Option<String>,
    /// `EMIT CHANGES` / `EMIT FINAL`, if given.
    pub emit: Option<Emit>,
    /// Where the SELECT starts.
    pub position: Option<Position>,
}

/// A column in `CREATE STREAM name (col TYPE, …)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    /// Column name, normalized as SQL (lower case unless quoted).
    pub name: String,
    /// Arrow type of the column.
    pub data_type: DataType,
    /// Declared `KEY` / `PRIMARY KEY`.
    pub key: bool,
}

/// `WITH (…)` properties, by upper-case name.
pub type Properties = BTreeMap<String, String>;

/// One statement.
#[derive(Debug, Clone)]
pub enum Statement {
    /// `CREATE STREAM|TABLE name (cols) WITH (…)` over an existing or new topic.
    CreateSource {
        /// Stream or table.
        kind: SourceKind,
        /// Upper-case name.
        name: String,
        /// `IF NOT EXISTS` was given.
        if_not_exists: bool,
        /// The declared columns.
        columns: Vec<ColumnSpec>,
        /// The `WITH` properties.
        properties: Properties,
    },
    /// `CREATE STREAM|TABLE name [WITH (…)] AS SELECT …`: a persistent query.
    CreateAsSelect {
        /// Stream or table.
        kind: SourceKind,
        /// Upper-case name.
        name: String,
        /// `IF NOT EXISTS` was given.
        if_not_exists: bool,
        /// The `WITH` properties.
        properties: Properties,
        /// The query.
        query: ContinuousQuery,
    },
    /// `INSERT INTO stream SELECT …`: a persistent query feeding an existing stream.
    InsertInto {
        /// Upper-case name of the target stream.
        target: String,
        /// The query.
        query: ContinuousQuery,
    },
    /// A transient `SELECT` (push or pull query).
    Select(ContinuousQuery),
    /// `EXPLAIN SELECT …`: the stream plan, without running it.
    Explain(ContinuousQuery),
    /// `SHOW|LIST STREAMS`.
    ShowStreams,
    /// `SHOW|LIST TABLES`.
    ShowTables,
    /// `SHOW|LIST QUERIES`.
    ShowQueries,
    /// `PRINT topic [FROM BEGINNING] [INTERVAL n] [LIMIT n]`: a topic's raw records.
    Print {
        /// The topic, exactly as written (topic names are case-sensitive).
        topic: String,
        /// Start at the oldest records instead of new ones.
        from_beginning: bool,
        /// Stop after this many records.
        limit: Option<u64>,
    },
    /// `DESCRIBE name [EXTENDED]`.
    Describe {
        /// Upper-case name.
        name: String,
        /// `EXTENDED` was given.
        extended: bool,
    },
    /// `TERMINATE query_id` (`None`: `TERMINATE ALL`).
    Terminate(Option<String>),
    /// `DROP STREAM|TABLE [IF EXISTS] name [DELETE TOPIC]`.
    Drop {
        /// Stream or table.
        kind: SourceKind,
        /// Upper-case name.
        name: String,
        /// `IF EXISTS` was given.
        if_exists: bool,
        /// `DELETE TOPIC` was given.
        delete_topic: bool,
    },
}

/// A statement with its own text, as the REST API echoes it back.
#[derive(Debug, Clone)]
pub struct ParsedStatement {
    /// The statement's text, ending with `;`.
    pub text: String,
    /// The parsed statement.
    pub statement: Statement,
}

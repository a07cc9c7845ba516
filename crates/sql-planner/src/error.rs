//! Errors of the planner: every one is the user's (bad SQL, unknown object, unsupported
//! construct) except `Internal`, which is a bug.

use std::fmt;

/// Where in the submitted text a problem was found (1-based, as editors count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, starting at 1.
    pub line: u64,
    /// Column, starting at 1.
    pub column: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// What kind of problem a [`PlanError`] is; the server maps it to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanErrorKind {
    /// The text is not valid SQL for Sluice's dialect.
    Syntax,
    /// A stream, table, column or query named in the statement does not exist.
    NotFound,
    /// The object to create already exists.
    AlreadyExists,
    /// Valid SQL, but Sluice cannot run it on a stream (yet).
    Unsupported,
    /// Valid SQL with a semantic problem (wrong type, missing property…).
    Invalid,
    /// A bug in Sluice.
    Internal,
}

/// A planning error with a message a user understands and, when known, its position.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PlanError {
    /// The class of the problem.
    pub kind: PlanErrorKind,
    /// Lowercase text naming the problem, without a final period.
    pub message: String,
    /// Position in the submitted text, when known.
    pub position: Option<Position>,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(f, "{} at {p}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl PlanError {
    /// A new error of `kind` without a position.
    pub fn new(kind: PlanErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            position: None,
        }
    }

    /// A syntax error at `position`.
    pub fn syntax(message: impl Into<String>, position: Option<Position>) -> Self {
        Self {
            kind: PlanErrorKind::Syntax,
            message: message.into(),
            position,
        }
    }

    /// An unsupported construct.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(PlanErrorKind::Unsupported, message)
    }

    /// A semantic problem.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(PlanErrorKind::Invalid, message)
    }

    /// A missing object.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(PlanErrorKind::NotFound, message)
    }

    /// Attach a position when the error has none yet.
    pub fn at(mut self, position: Option<Position>) -> Self {
        if self.position.is_none() {
            self.position = position;
        }
        self
    }

    /// Turn a DataFusion error raised while planning user SQL into a user error.
    pub fn from_datafusion(err: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as E;
        let position = err.diagnostic().and_then(|d| d.span).map(|s| Position {
            line: s.start.line,
            column: s.start.column,
        });
        let (kind, message) = match err.find_root() {
            E::SchemaError(e, _) => (PlanErrorKind::NotFound, e.to_string()),
            E::Plan(m) => (PlanErrorKind::Invalid, m.clone()),
            E::NotImplemented(m) => (PlanErrorKind::Unsupported, m.clone()),
            E::SQL(e, _) => (PlanErrorKind::Syntax, e.to_string()),
            E::Internal(m) => (PlanErrorKind::Internal, m.clone()),
            other => (PlanErrorKind::Invalid, other.to_string()),
        };
        Self {
            kind,
            message: tidy(&message),
            position,
        }
    }
}

/// DataFusion messages start with a capital and sometimes end with a period or a
/// backtrace hint; our messages are lowercase facts.
fn tidy(message: &str) -> String {
    let m = message.trim().trim_end_matches('.');
    let mut chars = m.chars();
    match chars.next() {
        Some(c) if chars.clone().next().is_some_and(|n| n.is_lowercase()) => {
            c.to_lowercase().chain(chars).collect()
        }
        _ => m.to_string(),
    }
}

/// The planner's result type.
pub type Result<T, E = PlanError> = std::result::Result<T, E>;

//! Tab completion: SQL keywords, and the names of the server's streams, tables and their
//! columns, refreshed after every statement.

use std::sync::{Arc, Mutex};

use rustyline::completion::Completer;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

const KEYWORDS: &[&str] = &[
    "ADVANCE",
    "AND",
    "AS",
    "BETWEEN",
    "BY",
    "CASE",
    "CAST",
    "CHANGES",
    "COUNT",
    "CREATE",
    "DESCRIBE",
    "DISTINCT",
    "DROP",
    "ELSE",
    "EMIT",
    "END",
    "EXISTS",
    "EXPLAIN",
    "EXTENDED",
    "FINAL",
    "FORMAT",
    "FROM",
    "GRACE",
    "GROUP",
    "HAVING",
    "HOPPING",
    "IF",
    "INSERT",
    "INTO",
    "IS",
    "JSON",
    "KAFKA_TOPIC",
    "KEY",
    "LIMIT",
    "NOT",
    "NULL",
    "OR",
    "ORDER",
    "OUTPUT",
    "PARTITIONS",
    "PERIOD",
    "PROPERTIES",
    "QUERIES",
    "RETENTION",
    "RUN",
    "SCRIPT",
    "SELECT",
    "SESSION",
    "SET",
    "SHOW",
    "SIZE",
    "STREAM",
    "STREAMS",
    "TABLE",
    "TABLES",
    "TABULAR",
    "TERMINATE",
    "THEN",
    "TIMESTAMP",
    "TIMESTAMP_FORMAT",
    "TUMBLING",
    "UNSET",
    "VALUE_FORMAT",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WINDOWEND",
    "WINDOWSTART",
    "WITH",
];

/// The completer rustyline calls; the names come from the server.
pub struct SqlHelper {
    /// Stream, table and column names.
    pub names: Arc<Mutex<Vec<String>>>,
}

impl SqlHelper {
    /// The words that complete `prefix`, keywords in the case the prefix is typed in.
    pub fn candidates(&self, prefix: &str) -> Vec<String> {
        if prefix.is_empty() {
            return vec![];
        }
        let lower = prefix.chars().all(|c| !c.is_ascii_uppercase());
        let upper_prefix = prefix.to_ascii_uppercase();
        let mut out: Vec<String> = KEYWORDS
            .iter()
            .filter(|k| k.starts_with(&upper_prefix))
            .map(|k| {
                if lower {
                    k.to_ascii_lowercase()
                } else {
                    k.to_string()
                }
            })
            .collect();
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        for n in names.iter() {
            if n.to_ascii_uppercase().starts_with(&upper_prefix) && !out.contains(n) {
                out.push(n.clone());
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

impl Completer for SqlHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let start = line[..pos]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        Ok((start, self.candidates(&line[start..pos])))
    }
}

impl Hinter for SqlHelper {
    type Hint = String;
}

impl Highlighter for SqlHelper {}

impl Validator for SqlHelper {}

impl Helper for SqlHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_and_names_complete_in_the_typed_case() {
        let helper = SqlHelper {
            names: Arc::new(Mutex::new(vec!["PAYMENTS".into(), "amount".into()])),
        };
        assert_eq!(helper.candidates("STR"), vec!["STREAM", "STREAMS"]);
        assert_eq!(helper.candidates("emi"), vec!["emit"]);
        assert_eq!(helper.candidates("pay"), vec!["PAYMENTS"]);
        assert_eq!(helper.candidates("AM"), vec!["amount"]);
        assert!(helper.candidates("").is_empty());
    }
}

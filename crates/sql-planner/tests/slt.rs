//! Golden SQL tests for the planner, no Kafka: every `tests/slt/*.slt` file (statements,
//! EXPLAIN output, error text), and every example program in `queries/` must plan.
//!
//! `SLT_COMPLETE=1 cargo test -p sluice-sql-planner --test slt` rewrites the expected
//! results of the `.slt` files from the current output.

use std::path::{Path, PathBuf};

use sluice_sql_planner::ddl::{declare_sink, declare_source};
use sluice_sql_planner::{parse_statements, Catalog, PlanError, QueryPlanner, Statement};
use sqllogictest::{DBOutput, DefaultColumnType};

/// A catalog and planner that "runs" statements by planning them.
struct Planner {
    catalog: Catalog,
    planner: QueryPlanner,
}

#[derive(Debug)]
struct Error(PlanError);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Error {}

impl sqllogictest::DB for Planner {
    type Error = Error;
    type ColumnType = DefaultColumnType;

    fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Error> {
        let mut output = DBOutput::StatementComplete(0);
        for parsed in parse_statements(sql).map_err(Error)? {
            output = self
                .run_one(&parsed.text, parsed.statement)
                .map_err(Error)?;
        }
        Ok(output)
    }
}

impl Planner {
    fn new() -> Self {
        Self {
            catalog: Catalog::new(),
            planner: QueryPlanner::new(),
        }
    }

    fn run_one(
        &mut self,
        text: &str,
        statement: Statement,
    ) -> Result<DBOutput<DefaultColumnType>, PlanError> {
        match statement {
            Statement::CreateSource {
                kind,
                name,
                columns,
                properties,
                ..
            } => {
                let declared = declare_source(kind, &name, &columns, properties, text)?;
                self.catalog.insert(declared.source)?;
            }
            Statement::CreateAsSelect {
                kind,
                name,
                properties,
                query,
                ..
            } => {
                let plan = self.planner.plan(&self.catalog, &query)?;
                let sink = declare_sink(kind, &name, properties, &plan, text)?;
                self.catalog.insert(sink.sink)?;
            }
            Statement::InsertInto { query, .. } => {
                self.planner.plan(&self.catalog, &query)?;
            }
            Statement::Explain(query) => {
                let plan = self.planner.plan(&self.catalog, &query)?;
                return Ok(DBOutput::Rows {
                    types: vec![DefaultColumnType::Text],
                    rows: plan
                        .to_string()
                        .lines()
                        .map(|l| vec![l.trim_end().to_string()])
                        .collect(),
                });
            }
            _ => {}
        }
        Ok(DBOutput::StatementComplete(0))
    }
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

fn main() {
    // Cargo sets it when running tests; the compile-time value can name another checkout
    // that shares the target directory.
    let root = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    );
    let root = root.as_path();
    let mut failed = 0;
    let mut passed = 0;
    let complete = std::env::var("SLT_COMPLETE").is_ok();
    for file in files(&root.join("tests/slt"), "slt") {
        let mut runner = sqllogictest::Runner::new(|| async { Ok(Planner::new()) });
        let result = if complete {
            futures::executor::block_on(runner.update_test_file(
                &file,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::default_column_validator,
            ))
            .map_err(|e| e.to_string())
        } else {
            runner
                .run_file(&file)
                .map_err(|e| e.display(true).to_string())
        };
        match result {
            Ok(()) => passed += 1,
            Err(e) => {
                failed += 1;
                eprintln!("FAILED {}:\n{e}", file.display());
            }
        }
    }
    // Every example program must plan, statement after statement.
    for file in files(&root.join("../../queries"), "sql") {
        let sql = std::fs::read_to_string(&file).expect("readable");
        let mut db = Planner::new();
        match sqllogictest::DB::run(&mut db, &sql) {
            Ok(_) => passed += 1,
            Err(e) => {
                failed += 1;
                eprintln!("FAILED {}: {e}", file.display());
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

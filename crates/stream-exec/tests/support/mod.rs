//! What the executor's integration tests share: plans made from SQL text, as the server
//! makes them.

use sluice_sql_planner::ddl::declare_source;
use sluice_sql_planner::{
    parse_statements, Catalog, QueryPlanner, SourceKind, Statement, StreamPlan,
};

/// Plan `sql` (a CTAS or CSAS) over the stream `ddl` declares.
pub fn plan(ddl: &str, sql: &str) -> StreamPlan {
    let mut catalog = Catalog::new();
    let Statement::CreateSource {
        name,
        columns,
        properties,
        ..
    } = parse_statements(ddl).expect("ddl").remove(0).statement
    else {
        unreachable!("a CREATE STREAM")
    };
    catalog
        .insert(
            declare_source(SourceKind::Stream, &name, &columns, properties, ddl)
                .expect("source")
                .source,
        )
        .expect("insert");
    let Statement::CreateAsSelect { query, .. } =
        parse_statements(sql).expect("sql").remove(0).statement
    else {
        unreachable!("a CTAS or CSAS")
    };
    QueryPlanner::new().plan(&catalog, &query).expect("plans")
}

//! What the executor's integration tests share: plans made from SQL text, as the server
//! makes them.

use sluice_sql_planner::{QueryPlanner, StreamPlan};

/// Plan `sql` (a CTAS or CSAS) over the stream `ddl` declares.
pub fn plan(ddl: &str, sql: &str) -> StreamPlan {
    QueryPlanner::new().plan_sql(ddl, sql).expect("plans")
}

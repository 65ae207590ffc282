//! Session settings of the worker's own connections.

use std::time::Duration;

use sqlx::{AssertSqlSafe, PgConnection};

/// Sets this session's `statement_timeout`; when `synchronous_commit_off`, turns
/// `synchronous_commit` off; when `generic_plans`, sets `plan_cache_mode = force_generic_plan`
/// (with `enable_seqscan` and `jit` off, see below).
/// Run right after connecting instead of as startup `options`, which connection poolers such as
/// PgBouncer refuse.
///
/// Generic plans are for the producers' own pool only (`claims` in `runtime/connections.rs`):
/// the claim is one prepared statement executed thousands of times a second whose best plan
/// does not depend on its parameters, and which the server would otherwise plan again at every
/// execution (a custom plan wins the server's comparison because it knows the array of kinds
/// and the `LIMIT`): 0.35–0.55 ms an idle claim against 0.07–0.10 ms on a generic plan.
///
/// One simple-protocol round trip (a parameterized statement would take two, on every new
/// connection). `SET` takes no parameters, so the values are spliced in; all are generated
/// here (an integer and keywords), never taken from input.
pub(crate) async fn configure(
    conn: &mut PgConnection,
    statement_timeout: Duration,
    synchronous_commit_off: bool,
    generic_plans: bool,
) -> Result<(), sqlx::Error> {
    let mut statement = format!(
        "SET statement_timeout = {}",
        statement_timeout.as_millis().max(1)
    );
    if synchronous_commit_off {
        statement.push_str("; SET synchronous_commit = off");
    }
    if generic_plans {
        // With a generic plan made once, its shape must not depend on the table's size when
        // it was made: planned on an empty, never-analysed table (a worker started before
        // the first enqueue), the claim's UPDATE chose a sequential scan and kept it for
        // 300,000 rows (2 s a claim). `enable_seqscan = off` keeps every scan of the claim on
        // an index; `jit = off` because that setting's penalty cost pushes the estimate past
        // `jit_above_cost`, and compiling the plan took 370 ms of each 10 ms claim.
        statement.push_str(
            "; SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; SET jit = off",
        );
    }
    sqlx::raw_sql(AssertSqlSafe(statement))
        .execute(conn)
        .await?;
    Ok(())
}

/// The role this session logged in as (`session_user`, which `SET ROLE` does not change).
pub(crate) async fn session_user(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT session_user::text AS "user!""#)
        .fetch_one(conn)
        .await
}

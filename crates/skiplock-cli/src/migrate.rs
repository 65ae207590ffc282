//! `skiplock migrate`.

use std::io::Write as _;

use anyhow::Context as _;
use sqlx::PgPool;

pub(crate) async fn run(pool: &PgPool) -> anyhow::Result<()> {
    let report = skiplock::migrate(pool).await?;
    let mut out = std::io::stdout().lock();
    if report.applied.is_empty() {
        writeln!(out, "schema is up to date")?;
    } else {
        let versions: Vec<String> = report.applied.iter().map(i32::to_string).collect();
        writeln!(out, "applied migrations: {}", versions.join(", "))?;
    }
    Ok(())
}

pub(crate) fn print_sql(since: i32) -> anyhow::Result<()> {
    std::io::stdout()
        .lock()
        .write_all(skiplock::script(since).as_bytes())
        .context("could not write the SQL")
}

//! Creating and dropping whole databases, for [`TestDatabase`](crate::TestDatabase).
//! CREATE/DROP DATABASE take no parameters, so the name is spliced in as a quoted identifier.

use sqlx::{AssertSqlSafe, PgConnection};

/// `name` as a quoted SQL identifier (`"` doubled), safe to splice into a statement.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(crate) async fn create(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    let statement = format!("CREATE DATABASE {}", quote_identifier(name));
    sqlx::raw_sql(AssertSqlSafe(statement))
        .execute(conn)
        .await?;
    Ok(())
}

/// Drops `name` if it exists, disconnecting whoever is still connected to it.
pub(crate) async fn drop_forced(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    let statement = format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_identifier(name)
    );
    sqlx::raw_sql(AssertSqlSafe(statement))
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::quote_identifier;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_identifier("plain"), "\"plain\"");
        assert_eq!(quote_identifier("a\"b; DROP"), "\"a\"\"b; DROP\"");
    }
}

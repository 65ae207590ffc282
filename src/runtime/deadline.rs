//! Every database call of the background roles has a deadline, so that no loop hangs on a
//! stalled connection, a lock or a half-open socket.

use std::future::Future;
use std::time::Duration;

/// A database call that failed or took too long.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbCallError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("no answer from the database within {0:?}")]
    Timeout(Duration),
}

/// Runs `call`, giving up after `limit`.
pub(crate) async fn deadline<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, DbCallError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(DbCallError::Timeout(limit)),
    }
}

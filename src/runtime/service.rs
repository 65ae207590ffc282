//! The one shape of the worker's background roles: a periodic [`Service`] (promoter, rescuer,
//! pruner) run by [`run`], and [`supervise`] for the roles that are one long task (heartbeat,
//! listener, producers).
//!
//! A service works in *rounds*, and a round in *steps*: one step is a few short statements
//! (one batch), and a step that left work behind says [`Step::More`]. Every step gets the
//! service's deadline ([`Service::timeout`], the worker's `db_timeout`), so no round hangs on a
//! stalled connection, and a stop request interrupts a round between steps or in the middle of
//! one (each statement commits its batch or nothing) as well as any sleep.
//!
//! Supervision: a round that fails or panics (the panic is caught) is logged, counted in the
//! role's [`RoleHealth`], and retried after a backoff that starts at the interval and doubles up
//! to [`MAX_BACKOFF_FACTOR`] intervals; one successful round resets it. A long task that panics
//! or returns before it was told to stop is restarted the same way (from 100 ms up to 30 s), and
//! counts as healthy again once it has run for [`STEADY_AFTER`]. A role with
//! [`UNHEALTHY_AFTER`] or more consecutive failures makes [`Health::is_healthy`] false.
//!
//! To adopt the shape, a role implements [`Service`]: `step` does one batch and adds what it did
//! to its report; `next_round` reads the report to choose the sleep (a scheduler asks for the
//! time of its next fire in its last step and sleeps until then, capped by the interval).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use tokio_util::sync::CancellationToken;

use super::deadline::DbCallError;
use crate::metrics::WorkerMetrics;

/// Consecutive failures after which a role counts as unhealthy: 3.
pub const UNHEALTHY_AFTER: u32 = 3;

/// A failing service waits at most this many intervals before its next round: 16.
pub const MAX_BACKOFF_FACTOR: u32 = 16;

/// How long a restarted task must run before it counts as healthy again: 30 s.
pub const STEADY_AFTER: Duration = Duration::from_secs(30);

/// The first wait before a task that panicked or returned is restarted; it doubles up to
/// [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// Whether a round has more work waiting right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A batch came back full: step again at once.
    More,
    /// Nothing is left: the round is over.
    Done,
}

/// A periodic background role.
pub(crate) trait Service: Send + Sync {
    /// What a round did; steps add to it.
    type Report: Default + Send;

    /// The role's name, in logs and in [`Health`].
    const NAME: &'static str;

    /// The longest sleep between rounds.
    fn interval(&self) -> Duration;

    /// The deadline of one step.
    fn timeout(&self) -> Duration;

    /// One batch of work, recorded in `report`.
    fn step(
        &self,
        report: &mut Self::Report,
    ) -> impl Future<Output = Result<Step, DbCallError>> + Send;

    /// How long to sleep after a successful round. Default: the interval.
    fn next_round(&self, report: &Self::Report) -> Duration {
        let _ = report;
        self.interval()
    }

    /// Logs what a successful round did (quietly: rounds run every second).
    fn log(report: &Self::Report);

    /// Called with what the round did when one of its steps fails or times out, before the
    /// error is returned; not after a panic, nor when the round is stopped or dropped.
    /// Default: nothing.
    fn round_failed(&self, report: &Self::Report) {
        let _ = report;
    }
}

/// Runs one round: steps, each within the service's deadline, until one says [`Step::Done`] or
/// `stop` fires (the report then holds what was done).
pub(crate) async fn round<S: Service>(
    service: &S,
    stop: &CancellationToken,
) -> Result<S::Report, DbCallError> {
    let mut report = S::Report::default();
    let limit = service.timeout();
    while !stop.is_cancelled() {
        let error = match tokio::time::timeout(limit, service.step(&mut report)).await {
            Ok(Ok(Step::More)) => continue,
            Ok(Ok(Step::Done)) => break,
            Ok(Err(error)) => error,
            Err(_) => DbCallError::Timeout(limit),
        };
        service.round_failed(&report);
        return Err(error);
    }
    Ok(report)
}

/// Runs rounds of `service` until `stop` fires, supervised: see the [module docs](self).
pub(crate) async fn run<S: Service>(service: &S, stop: &CancellationToken, health: &RoleMonitor) {
    loop {
        let attempt = AssertUnwindSafe(round(service, stop)).catch_unwind();
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = attempt => result,
        };
        let sleep = match result {
            Ok(Ok(report)) => {
                health.succeeded();
                S::log(&report);
                service.next_round(&report)
            }
            Ok(Err(error)) => {
                let failures = health.failed(error.to_string(), false);
                let retry_in = backoff(service.interval(), failures);
                tracing::warn!(
                    role = S::NAME,
                    %error,
                    failures,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "background round failed; retrying"
                );
                retry_in
            }
            Err(panic) => {
                let message = panic_message(&*panic);
                let failures = health.failed(format!("panicked: {message}"), true);
                let retry_in = backoff(service.interval(), failures);
                tracing::error!(
                    role = S::NAME,
                    panic = %message,
                    failures,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "background round panicked; restarting it"
                );
                retry_in
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Runs the long task `start()` makes until `stop` fires, restarting it with backoff whenever it
/// panics or returns before `stop` fired. The task is expected to watch `stop` itself.
pub(crate) async fn supervise<F, Fut>(health: RoleMonitor, stop: CancellationToken, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let task = AssertUnwindSafe(start()).catch_unwind();
        tokio::pin!(task);
        let result = tokio::select! {
            result = &mut task => result,
            () = tokio::time::sleep(STEADY_AFTER) => {
                health.succeeded();
                task.await
            }
        };
        let (failures, message) = match result {
            Ok(()) if stop.is_cancelled() => return,
            Ok(()) => {
                let message = "stopped on its own";
                (health.failed(message.to_owned(), false), message.to_owned())
            }
            Err(panic) => {
                let message = format!("panicked: {}", panic_message(&*panic));
                (health.failed(message.clone(), true), message)
            }
        };
        let exponent = failures.saturating_sub(1).min(16);
        let retry_in = FIRST_RESTART_DELAY
            .saturating_mul(1 << exponent)
            .min(MAX_RESTART_DELAY);
        tracing::error!(
            role = %health.name(),
            error = %message,
            failures,
            retry_in_ms = retry_in.as_millis() as u64,
            "background task failed; restarting it"
        );
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(retry_in) => {}
        }
    }
}

/// The wait after the `failures`-th consecutive failure: the interval, doubling up to
/// [`MAX_BACKOFF_FACTOR`] intervals.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(4);
    interval.saturating_mul(factor.min(MAX_BACKOFF_FACTOR))
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a non-string payload".to_owned()
    }
}

/// How the roles of a running worker are doing, from
/// [`WorkerHandle::health`](super::WorkerHandle::health).
///
/// A worker whose roles keep failing still runs, and still does what it can (a worker that
/// cannot reach the database retries every role); this report is for a readiness probe or an
/// alert: take the worker out of service, or restart the process, when it stays unhealthy.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Health {
    /// Whether this worker runs the maintenance roles now: it holds the maintenance
    /// leadership, or it was built with `listen(false)`, which turns election off (see
    /// [`WorkerBuilder::listen`](super::WorkerBuilder::listen)).
    pub maintenance: bool,
    /// Every supervised role, in the order they started: `completer`, `producer:<queue>`,
    /// `listener`, `heartbeat`, `leader` (the election), and `promoter`, `rescuer`, `pruner`,
    /// `scheduler` once this worker has run maintenance.
    pub roles: Vec<RoleHealth>,
}

impl Health {
    /// Whether no role has failed [`UNHEALTHY_AFTER`] times or more in a row.
    pub fn is_healthy(&self) -> bool {
        self.roles.iter().all(RoleHealth::is_healthy)
    }

    /// The role named `name`, if it has started.
    pub fn role(&self, name: &str) -> Option<&RoleHealth> {
        self.roles.iter().find(|role| role.name == name)
    }
}

/// How one background role is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoleHealth {
    /// The role: `promoter`, `rescuer`, `pruner`, `scheduler`, `producer:<queue>`, `completer`,
    /// `listener`, `heartbeat` or `leader`.
    pub name: String,
    /// Failures (errors and panics) since its last success; 0 when the last round succeeded.
    pub consecutive_failures: u32,
    /// Failures since the worker started.
    pub failures: u64,
    /// Of those, panics (each caught, logged, and followed by a restart).
    pub panics: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// When the last round succeeded (for long tasks: when the task had last run for
    /// [`STEADY_AFTER`] since its start); `None` before the first. Wall-clock time of the worker's
    /// machine.
    pub last_success: Option<SystemTime>,
}

impl RoleHealth {
    /// Whether it has failed fewer than [`UNHEALTHY_AFTER`] times in a row.
    pub fn is_healthy(&self) -> bool {
        self.consecutive_failures < UNHEALTHY_AFTER
    }
}

/// Where the roles of one worker record their health.
#[derive(Clone, Debug, Default)]
pub(crate) struct Monitor {
    roles: Arc<Mutex<Vec<RoleMonitor>>>,
    maintenance: Arc<AtomicBool>,
    /// Where failures are counted too (`skiplock_role_restarts_total`), with metrics.
    metrics: Option<Arc<WorkerMetrics>>,
}

impl Monitor {
    /// A monitor whose roles also count their failures in `metrics`.
    pub(crate) fn new(metrics: Option<Arc<WorkerMetrics>>) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    /// Records whether this worker runs the maintenance roles now.
    pub(crate) fn set_maintenance(&self, runs: bool) {
        self.maintenance.store(runs, Ordering::Relaxed);
    }

    /// Registers a role (or finds it when it was registered before: a role that starts again
    /// after a change of leader keeps its history).
    pub(crate) fn role(&self, name: impl Into<String>) -> RoleMonitor {
        let name = name.into();
        let mut roles = self.roles.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(role) = roles.iter().find(|role| role.name() == name) {
            return role.clone();
        }
        if let Some(metrics) = &self.metrics {
            metrics.role_started(&name);
        }
        let role = RoleMonitor {
            health: Arc::new(Mutex::new(RoleHealth {
                name,
                consecutive_failures: 0,
                failures: 0,
                panics: 0,
                last_error: None,
                last_success: None,
            })),
            metrics: self.metrics.clone(),
        };
        roles.push(role.clone());
        role
    }

    pub(crate) fn snapshot(&self) -> Health {
        let roles = self.roles.lock().unwrap_or_else(PoisonError::into_inner);
        Health {
            maintenance: self.maintenance.load(Ordering::Relaxed),
            roles: roles.iter().map(RoleMonitor::snapshot).collect(),
        }
    }
}

/// One role's entry in its worker's [`Monitor`].
#[derive(Clone, Debug)]
pub(crate) struct RoleMonitor {
    health: Arc<Mutex<RoleHealth>>,
    metrics: Option<Arc<WorkerMetrics>>,
}

impl RoleMonitor {
    fn lock(&self) -> std::sync::MutexGuard<'_, RoleHealth> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn name(&self) -> String {
        self.lock().name.clone()
    }

    fn snapshot(&self) -> RoleHealth {
        self.lock().clone()
    }

    pub(crate) fn succeeded(&self) {
        let mut health = self.lock();
        health.consecutive_failures = 0;
        health.last_success = Some(SystemTime::now());
    }

    /// Records a failure (after which the role is restarted or retried); returns the
    /// consecutive failures so far.
    pub(crate) fn failed(&self, message: String, panicked: bool) -> u32 {
        let mut health = self.lock();
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        health.failures += 1;
        health.panics += u64::from(panicked);
        health.last_error = Some(message);
        if let Some(metrics) = &self.metrics {
            metrics.role_restarted(&health.name);
        }
        health.consecutive_failures
    }
}

/// Runs `call` while another transaction holds an `ACCESS EXCLUSIVE` lock on `skiplock.jobs`
/// (tests of roles whose statements time out). Before the lock is released, the statements
/// left waiting for it are cancelled: one whose call timed out would still run once the lock
/// is released.
#[cfg(test)]
pub(crate) async fn while_jobs_are_locked<T>(
    pool: &sqlx::PgPool,
    call: impl Future<Output = T>,
) -> T {
    while_locked(
        pool,
        "LOCK TABLE skiplock.jobs IN ACCESS EXCLUSIVE MODE",
        call,
    )
    .await
}

/// [`while_jobs_are_locked`] with the lock taken by `lock`, a `LOCK TABLE` statement.
#[cfg(test)]
pub(crate) async fn while_locked<T>(
    pool: &sqlx::PgPool,
    lock: &'static str,
    call: impl Future<Output = T>,
) -> T {
    let mut blocker = pool.begin().await.expect("begin");
    sqlx::raw_sql(lock)
        .execute(&mut *blocker)
        .await
        .expect("lock");
    let result = call.await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The sessions are those of this transaction's snapshot of pg_stat_activity (taken
        // once); who blocks whom is read from the lock manager each time.
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity
             WHERE pg_backend_pid() = ANY (pg_blocking_pids(pid))",
        )
        .fetch_one(&mut *blocker)
        .await
        .expect("cancel the statements waiting for the lock");
        if waiting == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "statements still wait for the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    blocker.rollback().await.expect("rollback");
    result
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    /// Panics in its first round, fails in its second, then counts successful rounds.
    #[derive(Default)]
    struct Flaky {
        rounds: AtomicU32,
        failed: AtomicU32,
    }

    impl Service for Flaky {
        type Report = ();
        const NAME: &'static str = "flaky";

        fn interval(&self) -> Duration {
            Duration::from_millis(10)
        }

        fn timeout(&self) -> Duration {
            Duration::from_secs(1)
        }

        async fn step(&self, _: &mut ()) -> Result<Step, DbCallError> {
            match self.rounds.fetch_add(1, Ordering::SeqCst) {
                0 => panic!("injected"),
                1 => Err(DbCallError::Timeout(Duration::from_millis(1))),
                _ => Ok(Step::Done),
            }
        }

        fn log(_: &()) {}

        fn round_failed(&self, _: &()) {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_round_that_panics_or_fails_is_counted_and_retried() {
        let monitor = Monitor::default();
        let health = monitor.role(Flaky::NAME);
        let stop = CancellationToken::new();
        let flaky = Flaky::default();
        let runs = run(&flaky, &stop, &health);
        let watch = async {
            while flaky.rounds.load(Ordering::SeqCst) < 5 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stop.cancel();
        };
        tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(runs, watch) })
            .await
            .expect("the service keeps running after a panic");
        let report = monitor.snapshot();
        let role = report.role("flaky").expect("registered");
        assert_eq!(role.failures, 2);
        assert_eq!(role.panics, 1);
        assert_eq!(
            flaky.failed.load(Ordering::SeqCst),
            1,
            "told of the failed round"
        );
        assert_eq!(role.consecutive_failures, 0);
        assert!(role.last_success.is_some());
        assert!(report.is_healthy());
    }

    #[tokio::test]
    async fn a_role_that_keeps_failing_is_unhealthy() {
        let monitor = Monitor::default();
        let health = monitor.role("broken");
        let stop = CancellationToken::new();
        let starts = AtomicU32::new(0);
        let supervised = supervise(health, stop.clone(), || {
            starts.fetch_add(1, Ordering::SeqCst);
            async { panic!("always") }
        });
        let watch = async {
            while starts.load(Ordering::SeqCst) < 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stop.cancel();
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(supervised, watch)
        })
        .await
        .expect("restarted with backoff, stopped on request");
        let report = monitor.snapshot();
        assert!(!report.is_healthy());
        let role = report.role("broken").expect("registered");
        assert!(role.consecutive_failures >= UNHEALTHY_AFTER, "{role:?}");
        assert_eq!(role.last_error.as_deref(), Some("panicked: always"));
        assert_eq!(role.last_success, None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let second = Duration::from_secs(1);
        assert_eq!(backoff(second, 1), second);
        assert_eq!(backoff(second, 2), 2 * second);
        assert_eq!(backoff(second, 5), 16 * second);
        assert_eq!(backoff(second, 50), 16 * second);
    }
}

//! Worker processes for the tests that need several: the test binary itself, re-run to run
//! one of its ignored tests (the process's entry point), its configuration in the environment.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use skiplock::WorkerBuilder;
use sqlx::PgPool;

/// The body of a worker process's entry point: on a runtime of its own, runs the worker that
/// `builder` describes, given the value of the environment variable `env`, until it stops.
pub fn run<S>(env: &str, builder: impl FnOnce(String) -> WorkerBuilder<S>)
where
    S: Clone + Send + Sync + 'static,
{
    let config = std::env::var(env).expect("child config");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        builder(config)
            .build()
            .expect("worker")
            .run()
            .await
            .expect("worker run");
    });
}

/// A worker process, SIGKILLed when dropped unless it was stopped.
pub struct ChildWorker(Child);

impl ChildWorker {
    /// Re-runs this test binary to run only its ignored test `test`, with `value` in the
    /// environment variable `env` and `RUST_LOG=off`; its standard streams are closed.
    pub fn start(test: &str, env: &str, value: &str) -> Self {
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(env, value)
            .env("RUST_LOG", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn worker");
        Self(child)
    }

    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.0.id()).expect("pid"));
        kill(pid, signal).expect("signal");
    }

    pub fn is_running(&mut self) -> bool {
        self.0.try_wait().expect("wait").is_none()
    }

    /// SIGTERM, then the exit status must be success within 15 s.
    pub fn stop(mut self) {
        self.signal(Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                assert!(status.success(), "worker exited with {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "worker did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `count` worker processes as [`ChildWorker::start`] does, and waits (60 s at most)
/// until the database has `count` live workers.
pub async fn start_live(
    pool: &PgPool,
    count: i64,
    test: &str,
    env: &str,
    value: &str,
) -> Vec<ChildWorker> {
    let children = (0..count)
        .map(|_| ChildWorker::start(test, env, value))
        .collect();
    super::eventually(
        Duration::from_secs(60),
        &format!("{count} live worker processes"),
        || async {
            let live: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM skiplock.workers WHERE stopped_at IS NULL",
            )
            .fetch_one(pool)
            .await
            .expect("workers");
            (live == count).then_some(())
        },
    )
    .await;
    children
}

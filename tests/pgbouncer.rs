//! The worker behind a real PgBouncer (with `listen(false)`): a drain, a cron schedule and lease
//! renewal work; and the worker follows the application pool's connect options.
//!
//! PgBouncer is started by the test itself (the `pgbouncer` binary on PATH or in /usr/sbin,
//! run as the `postgres` system user when the tests run as root) on a free port, in front of
//! the test server. Without the binary the test says why and passes, unless
//! `SKIPLOCK_REQUIRE_PGBOUNCER=1`.
//!
//! Transaction pooling needs PgBouncer 1.21 or later (`max_prepared_statements`): sqlx prepares
//! every statement, and older versions cannot carry prepared statements from one server
//! connection to the next. With an older PgBouncer the test runs it in session pooling, which
//! still proves what the worker itself must do (no startup `options`, no LISTEN).

// The test says on stderr why it skipped or what pooling mode it ran.
#![allow(clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::{Record, Sleep, database, eventually, runs_per_job, wait_for_state, worker};
use skiplock::Schedule;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// A PgBouncer process, stopped and its directory removed on drop.
struct Bouncer {
    child: Child,
    dir: PathBuf,
    port: u16,
    transaction_pooling: bool,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // The child may be `runuser`, which does not pass SIGKILL on: stop PgBouncer by its pid.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pgbouncer_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("pgbouncer"));
    on_path
        .chain([PathBuf::from("/usr/sbin/pgbouncer")])
        .find(|path| path.is_file())
}

/// `(major, minor)` of `pgbouncer --version` ("PgBouncer 1.18.0").
fn version(binary: &Path) -> (u32, u32) {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .expect("pgbouncer --version");
    let text = String::from_utf8_lossy(&output.stdout);
    let number = text
        .split_whitespace()
        .nth(1)
        .expect("a version in pgbouncer --version");
    let mut parts = number
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port()
}

/// Starts PgBouncer in front of the server and database of `server`, or returns `None` (after
/// saying why) when there is no pgbouncer binary and it is not required.
fn start_bouncer(server: &PgConnectOptions, database: &str) -> Option<Bouncer> {
    let Some(binary) = pgbouncer_binary() else {
        let required = std::env::var("SKIPLOCK_REQUIRE_PGBOUNCER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "SKIPLOCK_REQUIRE_PGBOUNCER=1 but no pgbouncer binary was found"
        );
        eprintln!("pgbouncer not found (apt-get install pgbouncer): skipping the PgBouncer test");
        return None;
    };
    let (major, minor) = version(&binary);
    let transaction_pooling = (major, minor) >= (1, 21);
    if !transaction_pooling {
        eprintln!(
            "PgBouncer {major}.{minor} cannot carry sqlx's prepared statements across server \
             connections (1.21 can): testing with session pooling"
        );
    }
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("skiplock-pgbouncer-{database}"));
    std::fs::create_dir_all(&dir).expect("pgbouncer dir");
    // A unix socket's directory, or a host name: PgBouncer takes either as `host`.
    let host = server.get_socket().map_or_else(
        || server.get_host().to_owned(),
        |dir| dir.display().to_string(),
    );
    // In session pooling every client connection holds a server connection for its lifetime:
    // the pool must fit the test's pool (20) and all of the worker's own (about 10), or a
    // connection waits for a server that never frees up.
    let pool_mode = if transaction_pooling {
        "pool_mode = transaction\nmax_prepared_statements = 200\n"
    } else {
        "pool_mode = session\n"
    };
    let ini = format!(
        "[databases]\n\
         {database} = host={host} port={server_port} dbname={database}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {dir}/userlist.txt\n\
         {pool_mode}\
         default_pool_size = 50\n\
         max_client_conn = 200\n\
         ignore_startup_parameters = extra_float_digits\n\
         logfile = {dir}/pgbouncer.log\n\
         pidfile = {dir}/pgbouncer.pid\n",
        server_port = server.get_port(),
        dir = dir.display(),
    );
    std::fs::write(dir.join("pgbouncer.ini"), ini).expect("pgbouncer.ini");
    let user = server.get_username();
    std::fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"\"\n")).expect("userlist");
    // PgBouncer refuses to run as root: then it runs as the `postgres` system user.
    let mut command = if running_as_root() {
        let owned = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(owned.success(), "chown -R postgres {}", dir.display());
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(&binary);
        command
    } else {
        Command::new(&binary)
    };
    command.arg("--quiet").arg(dir.join("pgbouncer.ini"));
    let child = command.spawn().expect("start pgbouncer");
    Some(Bouncer {
        child,
        dir,
        port,
        transaction_pooling,
    })
}

/// A pool connecting through the bouncer.
async fn bounced_pool(bouncer: &Bouncer, server: &PgConnectOptions) -> PgPool {
    let options = server.clone().host("127.0.0.1").port(bouncer.port);
    let pool = PgPoolOptions::new().max_connections(20);
    eventually(
        Duration::from_secs(10),
        "PgBouncer to accept connections",
        || {
            let pool = pool.clone();
            let options = options.clone();
            async move { pool.connect_with(options).await.ok() }
        },
    )
    .await
}

/// What a stalled test needs to be explained from CI's output alone: the worker's roles and
/// their last errors, the jobs by state, the server's sessions and PgBouncer's log.
async fn stall_report(
    direct: &PgPool,
    running: &skiplock::WorkerHandle,
    bouncer: &Bouncer,
) -> String {
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state::text, count(*) FROM skiplock.jobs GROUP BY 1 ORDER BY 1")
            .fetch_all(direct)
            .await
            .unwrap_or_default();
    let sessions: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT coalesce(application_name, ''), coalesce(state, ''), \
                coalesce(wait_event_type || ':' || wait_event, ''), left(coalesce(query, ''), 120) \
         FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(direct)
    .await
    .unwrap_or_default();
    let log = std::fs::read_to_string(bouncer.dir.join("pgbouncer.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    format!(
        "worker finished: {}\nworker health: {:#?}\njobs by state: {states:?}\nserver sessions \
         ({}):\n{sessions:#?}\nPgBouncer log (last 40 lines, newest first):\n{}",
        running.is_finished(),
        running.health(),
        sessions.len(),
        tail.join("\n")
    )
}

#[tokio::test]
async fn a_worker_drains_fires_schedules_and_renews_leases_behind_pgbouncer() {
    let db = database().await;
    let Some(bouncer) = start_bouncer(db.connect_options(), db.name()) else {
        return;
    };
    let pool = bounced_pool(&bouncer, db.connect_options()).await;
    let mode: String = sqlx::query_scalar("SELECT 'reached the server through the bouncer'")
        .fetch_one(&pool)
        .await
        .expect("query through pgbouncer");
    assert!(!mode.is_empty());

    let lease = Duration::from_secs(2);
    let every_second = Schedule::new("tick", "* * * * * *", &Record { n: 0 }).expect("schedule");
    let running = worker(&pool)
        .listen(false)
        .lease(lease)
        .register::<Record>()
        .register::<Sleep>()
        .schedule(every_second)
        .build()
        .expect("worker")
        .start();
    let direct = db.pool();

    // A drain.
    let jobs = (0..50).map(|n| skiplock::NewJob::new(&Record { n }));
    let jobs: Vec<_> = jobs.collect::<Result<_, _>>().expect("jobs");
    let ids = skiplock::enqueue_many(&pool, jobs).await.expect("enqueue");
    // Lease renewal: a job that runs for two leases.
    let long = Sleep {
        millis: 4_000,
        stubborn: false,
    };
    let long = skiplock::enqueue(&pool, &long).await.expect("enqueue");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM skiplock.jobs WHERE id = ANY($1) AND state = 'completed'",
        )
        .bind(&ids)
        .fetch_one(direct)
        .await
        .expect("count");
        if done == 50 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out after 30 s waiting for the drain ({done} of 50 completed)\n{}",
                stall_report(direct, &running, &bouncer).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The schedule fires (its jobs run too).
    eventually(
        Duration::from_secs(15),
        "a scheduled job to run",
        || async {
            let fired: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM skiplock.jobs WHERE schedule = 'tick' AND state = 'completed'",
        )
        .fetch_one(direct)
        .await
        .expect("count");
            (fired >= 2).then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(20), "the long job", || async {
        (common::job(direct, long).await.state == skiplock::JobState::Completed).then_some(())
    })
    .await;
    running.shutdown().await.expect("shutdown");

    let row = common::job(direct, long).await;
    assert_eq!(row.attempt, 1);
    assert!(row.errors.is_empty(), "the long job lost its lease");
    assert!(
        runs_per_job(direct)
            .await
            .iter()
            .all(|(_, runs)| *runs == 1)
    );
    // The worker's own connections reached the server through the bouncer.
    let log = std::fs::read_to_string(bouncer.dir.join("pgbouncer.log")).unwrap_or_default();
    assert!(
        !log.contains("unsupported startup parameter"),
        "PgBouncer refused a startup parameter:\n{log}"
    );
    eprintln!(
        "behind PgBouncer ({} pooling): 50 jobs drained, schedule fired, lease renewed",
        if bouncer.transaction_pooling {
            "transaction"
        } else {
            "session"
        }
    );
    pool.close().await;
}

#[tokio::test]
async fn worker_connections_follow_the_application_pools_connect_options() {
    let db = database().await;
    let pool = db.pool();
    let role = format!("rotated_{}", db.name());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE \"{role}\" LOGIN SUPERUSER"
    )))
    .execute(pool)
    .await
    .expect("create role");
    let app = PgPoolOptions::new()
        .max_connections(5)
        .connect_with(db.connect_options().clone())
        .await
        .expect("app pool");
    let running = worker(&app)
        .listen(false)
        .register::<Record>()
        .build()
        .expect("worker")
        .start();
    skiplock::enqueue(&app, &Record { n: 1 })
        .await
        .expect("enqueue");
    wait_for_state(pool, "completed", 1, Duration::from_secs(10)).await;

    // The application refreshes its credentials. A connect already under way may still finish
    // with the old ones: let the worker work a little first, then replace its connections.
    app.set_connect_options(db.connect_options().clone().username(&role));
    skiplock::enqueue(&app, &Record { n: 2 })
        .await
        .expect("enqueue");
    wait_for_state(pool, "completed", 2, Duration::from_secs(10)).await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'skiplock-worker' AND datname = current_database()",
    )
    .execute(pool)
    .await
    .expect("terminate worker connections");
    skiplock::enqueue(&app, &Record { n: 3 })
        .await
        .expect("enqueue");
    wait_for_state(pool, "completed", 3, Duration::from_secs(10)).await;
    // pg_terminate_backend only signals: a terminated backend can show for a moment longer.
    let users: Vec<String> = eventually(Duration::from_secs(5), "new credentials", || async {
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT usename::text FROM pg_stat_activity
             WHERE application_name = 'skiplock-worker' AND datname = current_database()
               AND backend_type = 'client backend'",
        )
        .fetch_all(pool)
        .await
        .expect("worker connections");
        (users == [role.clone()]).then_some(users)
    })
    .await;
    running.shutdown().await.expect("shutdown");
    app.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE \"{role}\"")))
        .execute(pool)
        .await
        .expect("drop role");
    assert_eq!(users, vec![role]);
}

//! Tests of `skiplock_testing::embedded` against the PostgreSQL server binaries installed on the machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiplock_testing::embedded::{EmbeddedError, EmbeddedPostgres, ShutdownMode};

/// Runs one statement with psql; its unaligned output, or its stderr.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    // The psql next to the server binaries when SKIPLOCK_PG_BIN names them, else the one on PATH.
    let bin = std::env::var_os("SKIPLOCK_PG_BIN").map(|dir| Path::new(&dir).join("psql"));
    let program = bin
        .filter(|psql| psql.is_file())
        .unwrap_or_else(|| "psql".into());
    let out = Command::new(program)
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .map_err(|error| format!("could not run psql: {error}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn start() -> EmbeddedPostgres {
    EmbeddedPostgres::start().expect("embedded server starts")
}

/// The temporary directory holding the data directory and the log.
fn root_of(server: &EmbeddedPostgres) -> PathBuf {
    server
        .data_dir()
        .parent()
        .expect("data dir has a parent")
        .to_owned()
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// Whether the process runs; an exited one that its parent (init) has yet to reap does not.
fn process_alive(pid: i32) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    });
    !zombie && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn postmaster_pid(data_dir: &Path) -> i32 {
    let pid_file =
        std::fs::read_to_string(data_dir.join("postmaster.pid")).expect("postmaster.pid");
    pid_file
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .expect("a pid")
}

#[test]
fn starts_a_server_that_accepts_connections() {
    let server = start();
    assert_eq!(psql(&server.url(), "select 1").as_deref(), Ok("1"));
    assert_eq!(
        server.url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", server.port())
    );
    assert_eq!(
        server.url_for("a b/c"),
        format!("postgres://postgres@127.0.0.1:{}/a%20b%2Fc", server.port())
    );
    assert!(server.data_dir().join("PG_VERSION").is_file());
    assert!(server.bin_dir().join("pg_ctl").is_file());
    assert!(
        server.log_tail(50).contains("ready to accept connections"),
        "log: {}",
        server.log_tail(50)
    );
    assert_eq!(server.log_tail(1).lines().count(), 1);
    let root = root_of(&server);
    assert!(
        root.file_name()
            .expect("name")
            .to_string_lossy()
            .starts_with("skiplock-pg-")
    );
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::MetadataExt as _;
        let postgres = nix::unistd::User::from_name("postgres")
            .expect("lookup")
            .expect("user");
        let owner = std::fs::metadata(&root).expect("metadata").uid();
        assert_eq!(
            owner,
            postgres.uid.as_raw(),
            "the directory belongs to postgres"
        );
    }
}

#[test]
fn drop_stops_the_server_and_removes_the_directory() {
    let server = start();
    let root = root_of(&server);
    let pid = postmaster_pid(server.data_dir());
    let url = server.url();
    assert!(root.is_dir());
    drop(server);
    assert!(!root.exists(), "{} still exists after drop", root.display());
    // pg_ctl stop returns once the postmaster removed its pid file, a moment before it exits.
    let exited = wait_until(Duration::from_secs(5), || !process_alive(pid));
    assert!(exited, "postmaster {pid} still runs after drop");
    assert!(psql(&url, "select 1").is_err());
}

#[test]
fn settings_are_applied_and_validated() {
    let server = EmbeddedPostgres::builder()
        .setting("max_connections", "37")
        .setting("fsync", "off")
        .setting("log_line_prefix", "%m")
        .start();
    assert!(
        matches!(&server, Err(EmbeddedError::InvalidSetting { name, .. }) if name == "log_line_prefix"),
        "{server:?}"
    );
    for (name, value) in [
        ("bad name", "1"),
        ("", "1"),
        ("work_mem", "64MB; rm -rf /"),
        ("a", "'x'"),
    ] {
        let result = EmbeddedPostgres::builder().setting(name, value).start();
        assert!(
            matches!(result, Err(EmbeddedError::InvalidSetting { .. })),
            "{name}={value}"
        );
    }
    let server = EmbeddedPostgres::builder()
        .setting("max_connections", "37")
        .setting("fsync", "off")
        .setting("search_path", "")
        .setting("timezone", "America/New_York")
        .start()
        .expect("server starts");
    assert_eq!(
        psql(&server.url(), "show max_connections").as_deref(),
        Ok("37")
    );
    assert_eq!(psql(&server.url(), "show fsync").as_deref(), Ok("off"));
    assert_eq!(
        psql(&server.url(), "show timezone").as_deref(),
        Ok("America/New_York")
    );
}

#[test]
fn restarts_stops_and_starts_again() {
    let server = EmbeddedPostgres::builder()
        .setting("max_connections", "41")
        .start()
        .expect("server starts");
    let url = server.url();
    psql(&url, "create table t (x int); insert into t values (1)").expect("insert");
    let port = server.port();

    server.restart(ShutdownMode::Fast).expect("fast restart");
    assert_eq!(psql(&url, "select count(*) from t").as_deref(), Ok("1"));
    assert_eq!(psql(&url, "show max_connections").as_deref(), Ok("41"));

    psql(&url, "insert into t values (2)").expect("insert");
    let before = postmaster_pid(server.data_dir());
    server
        .restart(ShutdownMode::Immediate)
        .expect("immediate restart");
    assert_ne!(postmaster_pid(server.data_dir()), before);
    assert_eq!(psql(&url, "select count(*) from t").as_deref(), Ok("2"));
    assert!(
        server.log_tail(100).contains("immediate shutdown"),
        "{}",
        server.log_tail(100)
    );

    server.stop(ShutdownMode::Fast).expect("stop");
    assert!(psql(&url, "select 1").is_err());
    let again = server.stop(ShutdownMode::Fast);
    assert!(
        matches!(again, Err(EmbeddedError::CommandFailed { .. })),
        "{again:?}"
    );
    server.start_again().expect("start again");
    assert_eq!(server.port(), port);
    assert_eq!(psql(&url, "select count(*) from t").as_deref(), Ok("2"));

    server
        .stop(ShutdownMode::Immediate)
        .expect("immediate stop");
    let root = root_of(&server);
    drop(server);
    assert!(
        !root.exists(),
        "dropping a stopped server removes its directory"
    );
}

#[test]
fn two_servers_run_at_once() {
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(start);
        let b = scope.spawn(start);
        (a.join().expect("thread a"), b.join().expect("thread b"))
    });
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    assert_eq!(psql(&a.url(), "select 1").as_deref(), Ok("1"));
    assert_eq!(psql(&b.url(), "select 2").as_deref(), Ok("2"));
    let roots = [root_of(&a), root_of(&b)];
    drop(a);
    assert_eq!(
        psql(&b.url(), "select 3").as_deref(),
        Ok("3"),
        "b survives a's drop"
    );
    drop(b);
    assert!(roots.iter().all(|root| !root.exists()));
}

const CHILD_ENV: &str = "SKIPLOCK_EMBEDDED_TEST_CHILD_INFO";

/// Not a test on its own: run by `sigkill_of_the_owner_cleans_up` in a child process, it starts
/// a server, reports its port and directory in the file `CHILD_ENV` names, and waits to be killed.
#[test]
fn sigkill_child() {
    let Some(info) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let server = start();
    let partial = PathBuf::from(format!("{}.partial", info.to_string_lossy()));
    let text = format!("{}\n{}\n", server.port(), server.data_dir().display());
    std::fs::write(&partial, text).expect("write info");
    std::fs::rename(&partial, &info).expect("publish info");
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn sigkill_of_the_owner_cleans_up() {
    let info = std::env::temp_dir().join(format!("skiplock-embedded-test-{}", std::process::id()));
    let _ = std::fs::remove_file(&info);
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "sigkill_child",
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_ENV, &info)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let ready = wait_until(Duration::from_secs(60), || info.exists());
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child did not start a server");
    }
    let text = std::fs::read_to_string(&info).expect("read info");
    let _ = std::fs::remove_file(&info);
    let mut lines = text.lines();
    let port: u16 = lines
        .next()
        .and_then(|line| line.parse().ok())
        .expect("port");
    let data_dir = PathBuf::from(lines.next().expect("data dir"));
    let root = data_dir.parent().expect("root").to_owned();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    assert_eq!(psql(&url, "select 1").as_deref(), Ok("1"));
    let pid = postmaster_pid(&data_dir);

    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");

    let gone = wait_until(Duration::from_secs(10), || {
        !root.exists() && !process_alive(pid)
    });
    assert!(
        gone,
        "server {pid} or directory {} left behind",
        root.display()
    );
    assert!(psql(&url, "select 1").is_err());
}

#[test]
fn types_are_thread_safe() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<EmbeddedPostgres>();
    assert_send_sync::<EmbeddedError>();
}

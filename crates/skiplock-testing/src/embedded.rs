//! A throwaway PostgreSQL server for examples and tests.
//!
//! [`EmbeddedPostgres::start`] finds the PostgreSQL server binaries installed on the machine
//! (`initdb`, `pg_ctl`, `postgres`), creates a cluster in a new `skiplock-pg-*` directory under
//! [`std::env::temp_dir`], and starts it on a free port of 127.0.0.1 with `trust`
//! authentication. Connect as user `postgres` with [`EmbeddedPostgres::url`]. Dropping the value
//! stops the server and deletes the directory.
//!
//! Everything here blocks (starting takes about 1–3 s): call it outside async code, or through
//! `tokio::task::spawn_blocking`.
//!
//! ```no_run
//! # fn main() -> Result<(), skiplock_testing::embedded::EmbeddedError> {
//! let server = skiplock_testing::embedded::EmbeddedPostgres::builder().setting("fsync", "off").start()?;
//! let url = server.url(); // postgres://postgres@127.0.0.1:<port>/postgres
//! drop(server); // stops the server and deletes its directory
//! # Ok(()) }
//! ```
//!
//! # Finding the binaries
//!
//! The first directory holding `initdb`, `pg_ctl` and `postgres` among: `$SKIPLOCK_PG_BIN` (when
//! set, the only one tried); the real directory of `pg_ctl` on `PATH`, symlinks resolved;
//! `pg_config --bindir`; the highest-numbered `/usr/lib/postgresql/<N>/bin` (Debian, Ubuntu);
//! `/usr/pgsql-<N>/bin` (Fedora, RHEL); Homebrew's `/opt/homebrew/opt/postgresql*/bin` and
//! `/usr/local/opt/postgresql*/bin`.
//!
//! # Running as root
//!
//! PostgreSQL refuses to run as root. When the effective user is root (as in many CI
//! containers), every server-side command runs as the `postgres` system user instead, and the
//! temporary directory is handed to that user (so `TMPDIR` must be reachable by it, as `/tmp`
//! is); if there is no such user, starting fails with [`EmbeddedError::NoPostgresUser`].
//! Otherwise everything runs as the current user.
//!
//! # Cleanup survives SIGKILL
//!
//! A `Drop` impl alone would leave a running server and its directory behind whenever the
//! process is killed (SIGKILL, a harness's timeout, `panic = "abort"`). So as soon as the
//! directory exists, a small "reaper" shell process starts, running as the server user in its own
//! process group (a ctrl-c meant for this process does not reach it), with its stdin a pipe whose
//! write end only this process holds. The reaper blocks reading that pipe until it is closed,
//! either by `Drop` or by the kernel when this process dies, however it dies. It then runs
//! `pg_ctl stop -m immediate` and deletes the directory. `Drop` closes the pipe and waits (up to
//! 15 s) for the reaper, so the directory is gone when it returns.

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use std::{env, fs};

use tracing::{debug, info, warn};

/// How long `Drop` waits for the reaper to stop the server and delete the directory.
const REAPER_TIMEOUT: Duration = Duration::from_secs(15);
/// How many ports are tried when the chosen one gets taken before the server binds it.
const PORT_ATTEMPTS: u32 = 3;
/// The usual install locations, as listed in [`EmbeddedError::BinariesNotFound`].
const INSTALL_GLOBS: &str = "/usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, /opt/homebrew/opt/postgresql*/bin, /usr/local/opt/postgresql*/bin";
/// The server log, in the temporary directory.
const LOG_FILE: &str = "server.log";
/// The reaper's script: `$1` is pg_ctl, `$2` the data directory, `$3` the directory to delete.
/// The directory itself may stay when its parent is not writable by the server user (not the
/// case for `/tmp`); `Drop` deletes it then.
const REAPER_SCRIPT: &str = r#"trap '' INT HUP
cat >/dev/null
cd /
"$1" stop -D "$2" -m immediate -w >/dev/null 2>&1
for _ in 1 2 3 4 5; do
  rm -rf -- "$3" 2>/dev/null
  [ -z "$(ls -A -- "$3" 2>/dev/null)" ] && exit 0
  sleep 1
done
exit 1
"#;

/// The error of starting or controlling an [`EmbeddedPostgres`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddedError {
    /// No directory with `initdb`, `pg_ctl` and `postgres` was found.
    #[error(
        "no PostgreSQL server binaries found (looked in: {looked_in}); install them — \
         Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; \
         macOS: `brew install postgresql` — or set DATABASE_URL to an existing server"
    )]
    BinariesNotFound {
        /// The places searched, comma-separated.
        looked_in: String,
    },
    /// Running as root, and there is no `postgres` user to run the server as.
    #[error(
        "running as root, which PostgreSQL refuses, and there is no `postgres` user to run the \
         server as: create one (e.g. `useradd --system postgres`) or set DATABASE_URL to an \
         existing server"
    )]
    NoPostgresUser,
    /// A [`Builder::setting`] has characters that are not allowed.
    #[error(
        "invalid server setting `{name}={value}`: names may contain only ASCII letters, digits, \
         `_`, `.` and `-`, and values also `:` and `/`"
    )]
    InvalidSetting {
        /// The setting's name.
        name: String,
        /// The setting's value.
        value: String,
    },
    /// An operating-system operation failed.
    #[error("could not {action}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A PostgreSQL command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {output}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stdout and stderr, trimmed; for `pg_ctl`, followed by the server log's last lines.
        output: String,
    },
}

/// The uid and gid to run server commands as, when running as root.
type RunAs = Option<(u32, u32)>;

fn io_error(action: &'static str) -> impl FnOnce(io::Error) -> EmbeddedError {
    move |source| EmbeddedError::Io { action, source }
}

/// How [`EmbeddedPostgres::stop`] and [`EmbeddedPostgres::restart`] shut the server down
/// (`pg_ctl -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Wait for every client to disconnect.
    Smart,
    /// Disconnect clients, roll back their transactions and shut down cleanly.
    Fast,
    /// Quit at once without a checkpoint, as a crash would; the next start runs recovery.
    Immediate,
}

impl ShutdownMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Smart => "smart",
            Self::Fast => "fast",
            Self::Immediate => "immediate",
        }
    }
}

/// Configures an [`EmbeddedPostgres`] before it starts; made by [`EmbeddedPostgres::builder`].
#[derive(Debug, Clone, Default)]
pub struct Builder {
    settings: Vec<(String, String)>,
}

impl Builder {
    /// Adds a server setting, passed as `-c name=value` (e.g. `("fsync", "off")`); there are
    /// none by default. The name may contain only ASCII letters, digits, `_`, `.` and `-`, the
    /// value also `:` and `/`; anything else makes [`start`](Self::start) fail with
    /// [`EmbeddedError::InvalidSetting`].
    #[must_use]
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Creates a cluster in a new temporary directory and starts the server, waiting until it
    /// accepts connections (up to 60 s). Blocks, typically for 1–3 s.
    ///
    /// # Errors
    /// [`EmbeddedError`] when a setting is invalid, the binaries or (as root) the `postgres` user
    /// are missing, or `initdb` or `pg_ctl start` fails.
    pub fn start(self) -> Result<EmbeddedPostgres, EmbeddedError> {
        let ok = |s: &str, extra: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c) || extra.contains(c))
        };
        if let Some((name, value)) = self
            .settings
            .iter()
            .find(|(name, value)| name.is_empty() || !ok(name, "") || !ok(value, ":/"))
        {
            let (name, value) = (name.clone(), value.clone());
            return Err(EmbeddedError::InvalidSetting { name, value });
        }
        let bin_dir = find_binaries()?;
        let run_as = server_user()?;
        let root = tempfile::Builder::new()
            .prefix("skiplock-pg-")
            .tempdir_in(env::temp_dir())
            .map_err(io_error("create a temporary directory"))?
            .keep();
        let reaper = match spawn_reaper(&root, &bin_dir, run_as) {
            Ok(reaper) => reaper,
            Err(error) => {
                let _ = fs::remove_dir_all(&root);
                return Err(error);
            }
        };
        let mut server = EmbeddedPostgres {
            data_dir: root.join("data"),
            root,
            bin_dir,
            run_as,
            port: 0,
            options: String::new(),
            lifecycle: Mutex::new(()),
            reaper: Some(reaper),
        };
        // From here on, an early return drops `server`, whose reaper cleans up.
        let mut initdb = server.command("initdb");
        initdb.arg("-D").arg(&server.data_dir);
        initdb.args("-U postgres --auth=trust -E UTF8 --no-locale --no-sync".split(' '));
        run(&mut initdb, "run initdb")?;
        for attempt in 1..=PORT_ATTEMPTS {
            server.port = free_port()?;
            server.options = server_options(server.port, &server.root, &self.settings);
            let log_start = fs::metadata(server.root.join(LOG_FILE)).map_or(0, |m| m.len());
            match server.pg_ctl(&["start"]) {
                Ok(()) => break,
                Err(error) if attempt < PORT_ATTEMPTS && server.port_taken(log_start) => {
                    debug!(port = server.port, %error, "port taken, retrying with another");
                }
                Err(error) => return Err(error),
            }
        }
        info!(port = server.port, dir = %server.root.display(), "started throwaway PostgreSQL");
        Ok(server)
    }
}

/// A PostgreSQL server in a temporary directory, stopped and deleted on drop, and also when this
/// process dies, even by SIGKILL (see the [module docs](self)). Dropping blocks until that is
/// done: typically a fraction of a second, at most 15 s.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    /// The temporary directory: `data/`, `server.log` and the Unix socket.
    root: PathBuf,
    data_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: RunAs,
    port: u16,
    /// The `pg_ctl -o` string: port, listen address, socket directory, user settings.
    options: String,
    /// Serializes `pg_ctl` calls.
    lifecycle: Mutex<()>,
    /// The reaper; its stdin is the pipe whose closing triggers cleanup.
    reaper: Option<Child>,
}

impl EmbeddedPostgres {
    /// Starts a server without extra settings: `builder().start()`. Blocks for about 1–3 s.
    ///
    /// # Errors
    /// As [`Builder::start`].
    pub fn start() -> Result<Self, EmbeddedError> {
        Self::builder().start()
    }

    /// A [`Builder`], to add server settings before starting.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The URL of the `postgres` database as user `postgres` (no password):
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of the given database as user `postgres`; the name is percent-encoded.
    pub fn url_for(&self, database: &str) -> String {
        let mut url = format!("postgres://postgres@127.0.0.1:{}/", self.port);
        for byte in database.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                url.push(char::from(byte));
            } else {
                let _ = write!(url, "%{byte:02X}");
            }
        }
        url
    }

    /// The TCP port the server listens on, on 127.0.0.1 only (its Unix socket is in the
    /// temporary directory). It stays the same across [`restart`](Self::restart) and
    /// [`start_again`](Self::start_again).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory (`data` in the temporary directory).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory the server binaries were found in.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The last `lines` lines of the server log (`server.log` in the temporary directory), e.g.
    /// for an error message; a note in parentheses if the log cannot be read.
    pub fn log_tail(&self, lines: usize) -> String {
        match fs::read(self.root.join(LOG_FILE)) {
            Ok(log) => {
                let log = String::from_utf8_lossy(&log);
                let all: Vec<&str> = log.trim_end().lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(error) => format!("(could not read the server log: {error})"),
        }
    }

    /// Stops the server (`pg_ctl stop -w -m <mode>`), waiting until it is down (up to 60 s).
    /// The directory stays until drop; [`start_again`](Self::start_again) restarts the server.
    ///
    /// # Errors
    /// [`EmbeddedError::CommandFailed`] if `pg_ctl` fails, e.g. the server is not running.
    pub fn stop(&self, mode: ShutdownMode) -> Result<(), EmbeddedError> {
        self.pg_ctl(&["stop", "-m", mode.as_str()])
    }

    /// Starts the server again after [`stop`](Self::stop), with the same port and settings,
    /// waiting until it accepts connections (up to 60 s).
    ///
    /// # Errors
    /// [`EmbeddedError::CommandFailed`] if `pg_ctl start` fails, e.g. the port was taken
    /// meanwhile.
    pub fn start_again(&self) -> Result<(), EmbeddedError> {
        self.pg_ctl(&["start"])
    }

    /// Restarts the server (`pg_ctl restart -w -m <mode>`) with the same port and settings,
    /// waiting until it accepts connections again (up to 60 s).
    ///
    /// # Errors
    /// [`EmbeddedError::CommandFailed`] if `pg_ctl restart` fails.
    pub fn restart(&self, mode: ShutdownMode) -> Result<(), EmbeddedError> {
        self.pg_ctl(&["restart", "-m", mode.as_str()])
    }

    /// Runs `pg_ctl <args> -D <data> -w -t 60`, with the log file and options unless stopping.
    fn pg_ctl(&self, args: &[&str]) -> Result<(), EmbeddedError> {
        let _guard = self
            .lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .args(args)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "60"]);
        if args.first() != Some(&"stop") {
            // Without -l the server would write to, and hold open, our output pipes.
            pg_ctl
                .arg("-l")
                .arg(self.root.join(LOG_FILE))
                .args(["-o", &self.options]);
        }
        run(&mut pg_ctl, "run pg_ctl")
            .map(drop)
            .map_err(|mut error| {
                if let EmbeddedError::CommandFailed { output, .. } = &mut error {
                    let _ = write!(output, "\nserver log:\n{}", self.log_tail(20));
                }
                error
            })
    }

    /// Whether the last start failed because its port was taken.
    fn port_taken(&self, log_start: u64) -> bool {
        let log = fs::read(self.root.join(LOG_FILE)).unwrap_or_default();
        let new = log
            .get(usize::try_from(log_start).unwrap_or(0)..)
            .unwrap_or_default();
        let new = String::from_utf8_lossy(new);
        new.contains("could not bind")
            || new.contains("already in use")
            || TcpListener::bind((Ipv4Addr::LOCALHOST, self.port))
                .is_err_and(|error| error.kind() == io::ErrorKind::AddrInUse)
    }

    /// A command for one of the server binaries, run as the server user in the directory.
    fn command(&self, program: &str) -> Command {
        server_command(self.bin_dir.join(program), &self.root, self.run_as)
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        let Some(mut reaper) = self.reaper.take() else {
            return;
        };
        drop(reaper.stdin.take()); // EOF: the reaper stops the server and deletes the directory.
        let deadline = Instant::now() + REAPER_TIMEOUT;
        let status = loop {
            match reaper.try_wait() {
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other,
            }
        };
        let dir = self.root.display();
        match status {
            Ok(Some(status)) if status.success() => {
                // Left only when the server user may not write to its parent (see the script).
                if self.root.exists() {
                    let _ = fs::remove_dir(&self.root);
                }
                debug!(%dir, "removed throwaway PostgreSQL");
            }
            Ok(Some(status)) => warn!(%dir, %status, "could not remove throwaway PostgreSQL"),
            Ok(None) => warn!(%dir, "throwaway PostgreSQL cleanup still running after 15 s"),
            Err(error) => warn!(%dir, %error, "could not wait for throwaway PostgreSQL cleanup"),
        }
    }
}

/// The uid and gid of the `postgres` user when running as root, to run server commands as.
fn server_user() -> Result<RunAs, EmbeddedError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .map_err(|errno| io_error("look up the postgres user")(errno.into()))?
        .ok_or(EmbeddedError::NoPostgresUser)?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn server_command(program: PathBuf, dir: &Path, run_as: RunAs) -> Command {
    let mut command = Command::new(program);
    // The server user may not be able to enter our working directory (e.g. /root).
    command.current_dir(dir).stdin(Stdio::null());
    if let Some((uid, gid)) = run_as {
        // std also drops root's supplementary groups (setgroups(0)) before setuid.
        command.uid(uid).gid(gid);
    }
    command
}

/// Hands `root` to the server user and starts the reaper (see the module docs).
fn spawn_reaper(root: &Path, bin: &Path, run_as: RunAs) -> Result<Child, EmbeddedError> {
    if let Some((uid, gid)) = run_as {
        let chown = std::os::unix::fs::chown(root, Some(uid), Some(gid));
        chown.map_err(io_error(
            "give the temporary directory to the postgres user",
        ))?;
    }
    let mut reaper = server_command(PathBuf::from("/bin/sh"), root, run_as);
    // Paths go in as positional parameters, never into the script's text.
    let paths = [bin.join("pg_ctl"), root.join("data"), root.to_path_buf()];
    reaper
        .args(["-c", REAPER_SCRIPT, "skiplock-pg-reaper"])
        .args(paths);
    reaper.stdin(Stdio::piped()).stdout(Stdio::null());
    let reaper = reaper.stderr(Stdio::null()).process_group(0).spawn();
    reaper.map_err(io_error("start the cleanup process"))
}

/// Runs a command to completion, returning its trimmed stdout and stderr.
fn run(command: &mut Command, action: &'static str) -> Result<String, EmbeddedError> {
    let program = Path::new(command.get_program()).file_name();
    let mut line = program.unwrap_or_default().to_string_lossy().into_owned();
    for arg in command.get_args().map(|arg| arg.to_string_lossy()) {
        let quote = if arg.contains(' ') { "'" } else { "" };
        let _ = write!(line, " {quote}{arg}{quote}");
    }
    debug!(command = %line, "running");
    let out = command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = out.output().map_err(io_error(action))?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
    let output = format!("{}\n{}", text(&out.stdout), text(&out.stderr));
    let output = output.trim().to_owned();
    if out.status.success() {
        return Ok(output);
    }
    Err(EmbeddedError::CommandFailed {
        command: line,
        status: out.status,
        output,
    })
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> Result<u16, EmbeddedError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0));
    let address = listener.and_then(|listener| listener.local_addr());
    Ok(address.map_err(io_error("find a free port"))?.port())
}

/// The `pg_ctl -o` string, which pg_ctl hands to `/bin/sh`: the socket directory is single-quoted,
/// the rest is digits and validated setting characters.
fn server_options(port: u16, socket_dir: &Path, settings: &[(String, String)]) -> String {
    let dir = socket_dir.to_string_lossy().replace('\'', r"'\''");
    let mut options = format!("-p {port} -c listen_addresses=127.0.0.1 -k '{dir}'");
    for (name, value) in settings {
        let _ = write!(options, " -c {name}={value}");
    }
    options
}

/// Finds a directory with `initdb`, `pg_ctl` and `postgres`: `$SKIPLOCK_PG_BIN`, else the first
/// of pg_ctl's directory on `PATH`, `pg_config --bindir` and the usual install locations.
fn find_binaries() -> Result<PathBuf, EmbeddedError> {
    let mut looked_in = Vec::new();
    let mut check = |dir: &Path, label: String| {
        if !looked_in.contains(&label) {
            looked_in.push(label);
        }
        let has = |bin: &str| dir.join(bin).is_file();
        has("initdb") && has("pg_ctl") && has("postgres")
    };
    if let Some(dir) = env::var_os("SKIPLOCK_PG_BIN").filter(|dir| !dir.is_empty()) {
        let dir = PathBuf::from(dir);
        let found = check(&dir, format!("SKIPLOCK_PG_BIN={}", dir.display()));
        return found.then_some(dir).ok_or_else(|| not_found(&looked_in));
    }
    let mut candidates = Vec::new();
    // E.g. /usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin/pg_ctl, next to initdb.
    if let Some(pg_ctl) = on_path("pg_ctl").and_then(|path| fs::canonicalize(path).ok()) {
        candidates.extend(pg_ctl.parent().map(Path::to_path_buf));
    }
    if let Some(pg_config) = on_path("pg_config") {
        let out = Command::new(pg_config).arg("--bindir").output();
        if let Ok(out) = out
            && out.status.success()
        {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    for (parent, prefix) in [
        ("/usr/lib/postgresql", ""),
        ("/usr", "pgsql-"),
        ("/opt/homebrew/opt", "postgresql"),
        ("/usr/local/opt", "postgresql"),
    ] {
        candidates.extend(versioned_dirs(Path::new(parent), prefix).map(|dir| dir.join("bin")));
    }
    for dir in candidates {
        if check(&dir, dir.display().to_string()) {
            debug!(dir = %dir.display(), "found PostgreSQL server binaries");
            return Ok(dir);
        }
    }
    looked_in.push(INSTALL_GLOBS.to_owned());
    Err(not_found(&looked_in))
}

fn not_found(looked_in: &[String]) -> EmbeddedError {
    EmbeddedError::BinariesNotFound {
        looked_in: looked_in.join(", "),
    }
}

/// The executable file `name` in the first `PATH` directory that has one.
fn on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|file| {
            fs::metadata(file)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// The entries of `parent` named `<prefix><version>`, highest version first. The version is
/// numbers and dots, optionally after an `@` (Homebrew's `postgresql@16`); none sorts last.
fn versioned_dirs(parent: &Path, prefix: &str) -> impl Iterator<Item = PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(parent)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name();
            let rest = name.to_str()?.strip_prefix(prefix)?;
            let rest = rest.strip_prefix('@').unwrap_or(rest);
            let version = match rest {
                "" => Vec::new(),
                _ => rest
                    .split('.')
                    .map(|part| part.parse().ok())
                    .collect::<Option<_>>()?,
            };
            Some((version, entry.path()))
        })
        .collect();
    found.sort_by(|a, b| b.cmp(a));
    found.into_iter().map(|(_, path)| path)
}

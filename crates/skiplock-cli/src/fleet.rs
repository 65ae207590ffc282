//! `skiplock queues list|pause|resume`, `skiplock workers list`, `skiplock stats` and `skiplock top`.

use std::fmt::Write as _;
use std::io::IsTerminal as _;

use chrono::{DateTime, Utc};
use serde::Serialize;
use skiplock::inspect::{
    self, HealthOptions, HealthReport, QueueInfo, Severity, WorkerInfo, WorkerStatus,
};
use skiplock::queue;
use sqlx::PgPool;

use crate::cli_inspect::{JsonArgs, PauseArgs, QueueName, TopArgs};
use crate::text::{self, Table, print, print_json};

pub(crate) async fn queues(pool: &PgPool, args: JsonArgs) -> anyhow::Result<()> {
    let queues = inspect::queues(pool).await?;
    if args.json {
        return print_json(&queues);
    }
    if queues.is_empty() {
        return print("no queues: no jobs, workers or schedules yet\n");
    }
    let mut table = Table::new(&[
        "queue",
        ">scheduled",
        ">available",
        ">running",
        ">retryable",
        ">completed",
        ">failed",
        ">cancelled",
        ">lag",
        ">done/1m",
        ">failed/1m",
        ">done/1h",
        ">failed/1h",
        ">workers",
        ">slots",
        "paused",
    ]);
    for q in &queues {
        table.row(vec![
            q.name.clone(),
            q.scheduled.to_string(),
            q.available.to_string(),
            q.running.to_string(),
            q.retryable.to_string(),
            q.completed.to_string(),
            q.failed.to_string(),
            q.cancelled.to_string(),
            lag(q),
            q.completed_last_minute.to_string(),
            q.failed_last_minute.to_string(),
            q.completed_last_hour.to_string(),
            q.failed_last_hour.to_string(),
            q.workers.to_string(),
            q.concurrency.to_string(),
            paused(q),
        ]);
    }
    print(&table.render())
}

/// `-`, or when and why the queue was paused.
fn paused(queue: &QueueInfo) -> String {
    queue.paused.as_ref().map_or_else(
        || "-".to_owned(),
        |pause| {
            let since = text::relative(pause.since, Utc::now());
            match &pause.reason {
                Some(reason) => format!("{since} ({})", text::truncate(reason, 40)),
                None => since,
            }
        },
    )
}

pub(crate) async fn pause(pool: &PgPool, args: PauseArgs) -> anyhow::Result<()> {
    if queue::pause(pool, &args.queue, args.reason.as_deref()).await? {
        print(&format!("queue {:?} paused\n", args.queue))
    } else {
        print(&format!("queue {:?} was already paused\n", args.queue))
    }
}

pub(crate) async fn resume(pool: &PgPool, args: QueueName) -> anyhow::Result<()> {
    if queue::resume(pool, &args.queue).await? {
        print(&format!("queue {:?} resumed\n", args.queue))
    } else {
        print(&format!("queue {:?} was not paused\n", args.queue))
    }
}

/// How long the oldest available job has waited; `-` when none waits.
fn lag(queue: &QueueInfo) -> String {
    queue
        .oldest_available_age
        .map_or_else(|| "-".to_owned(), text::short)
}

pub(crate) async fn workers(pool: &PgPool, args: JsonArgs) -> anyhow::Result<()> {
    let workers = inspect::workers(pool).await?;
    if args.json {
        return print_json(&workers);
    }
    if workers.is_empty() {
        return print("no workers (none alive, none stopped or lost in the last hour)\n");
    }
    print(&workers_table(&workers, Utc::now()))
}

fn workers_table(workers: &[WorkerInfo], now: DateTime<Utc>) -> String {
    let mut table = Table::new(&[
        "id",
        "status",
        "heartbeat",
        ">running",
        "queues",
        "version",
        "started",
    ]);
    for worker in workers {
        let mut status = worker.status.to_string();
        if let Some(at) = worker.stopped_at {
            write!(status, " {}", text::relative(at, now)).ok();
        }
        let queues: Vec<String> = worker
            .queues
            .iter()
            .map(|queue| match queue.concurrency {
                Some(n) => format!("{}={n}", queue.name),
                None => queue.name.clone(),
            })
            .collect();
        table.row(vec![
            worker.id.clone(),
            status,
            text::relative(worker.heartbeat_at, now),
            worker.running.to_string(),
            queues.join(","),
            worker.version.clone().unwrap_or_else(|| "-".to_owned()),
            text::relative(worker.started_at, now),
        ]);
    }
    table.render()
}

/// What `stats` and each frame of `top` show.
#[derive(Serialize)]
struct Overview {
    queues: Vec<QueueInfo>,
    workers: Vec<WorkerInfo>,
    health: HealthReport,
}

async fn overview(pool: &PgPool) -> anyhow::Result<Overview> {
    let options = HealthOptions::default();
    let (queues, workers, health) = tokio::try_join!(
        inspect::queues(pool),
        inspect::workers(pool),
        inspect::health(pool, &options),
    )?;
    Ok(Overview {
        queues,
        workers,
        health,
    })
}

/// One screen: the queues, the workers in a line, the health checks that are not ok.
fn render(overview: &Overview, now: DateTime<Utc>, title: &str) -> String {
    let mut out = format!("{title}  {}\n\n", now.format("%Y-%m-%d %H:%M:%S UTC"));
    if overview.queues.is_empty() {
        out.push_str("no queues: no jobs, workers or schedules yet\n");
    } else {
        let mut table = Table::new(&[
            "queue",
            ">available",
            ">running",
            ">scheduled",
            ">retryable",
            ">failed",
            ">lag",
            ">done/1m",
            ">failed/1m",
            ">done/1h",
            ">failed/1h",
            ">workers",
        ]);
        for q in &overview.queues {
            table.row(vec![
                q.name.clone(),
                q.available.to_string(),
                format!("{}/{}", q.running, q.concurrency),
                q.scheduled.to_string(),
                q.retryable.to_string(),
                q.failed.to_string(),
                lag(q),
                q.completed_last_minute.to_string(),
                q.failed_last_minute.to_string(),
                q.completed_last_hour.to_string(),
                q.failed_last_hour.to_string(),
                q.workers.to_string(),
            ]);
        }
        out.push_str(&table.render());
    }
    out.push('\n');
    out.push_str(&workers_line(&overview.workers));
    out.push_str(&health_line(&overview.health));
    out
}

/// `workers: 2 alive, 1 lost (last hour); 5 jobs running in 18 slots`.
fn workers_line(workers: &[WorkerInfo]) -> String {
    let statuses = [
        WorkerStatus::Alive,
        WorkerStatus::Unresponsive,
        WorkerStatus::Stopped,
        WorkerStatus::Lost,
    ];
    let counts: Vec<String> = statuses
        .iter()
        .filter_map(|status| {
            let n = workers.iter().filter(|w| w.status == *status).count();
            (n > 0).then(|| format!("{n} {status}"))
        })
        .collect();
    if counts.is_empty() {
        return "workers: none\n".to_owned();
    }
    let alive = workers.iter().filter(|w| w.status == WorkerStatus::Alive);
    let slots: u64 = alive
        .clone()
        .flat_map(|w| w.queues.iter().filter_map(|q| q.concurrency))
        .map(u64::from)
        .sum();
    let running: u64 = workers.iter().map(|w| w.running).sum();
    format!(
        "workers: {}; {} running, {} in {}\n",
        counts.join(", "),
        text::plural(running, "job"),
        text::plural(slots, "slot"),
        text::plural(alive.count(), "live worker"),
    )
}

/// `health: ok`, or the names of the checks that are not, by severity.
fn health_line(health: &HealthReport) -> String {
    let names = |severity: Severity| {
        health
            .checks
            .iter()
            .filter(|check| check.severity == severity)
            .map(|check| check.name)
            .collect::<Vec<_>>()
    };
    let mut parts = Vec::new();
    for severity in [Severity::Critical, Severity::Warning] {
        let names = names(severity);
        if !names.is_empty() {
            parts.push(format!("{severity}: {}", names.join(", ")));
        }
    }
    if parts.is_empty() {
        "health: ok\n".to_owned()
    } else {
        format!("health: {} (see skiplock doctor)\n", parts.join("; "))
    }
}

pub(crate) async fn stats(pool: &PgPool, args: JsonArgs) -> anyhow::Result<()> {
    let overview = overview(pool).await?;
    if args.json {
        return print_json(&overview);
    }
    print(&render(&overview, Utc::now(), "skiplock stats"))
}

/// On a terminal: the alternate screen, redrawn in place every interval until Ctrl-C, SIGTERM
/// or `q`. Otherwise one frame after another, a blank line apart (like `top -b`).
pub(crate) async fn top(pool: &PgPool, args: TopArgs) -> anyhow::Result<()> {
    let live = std::io::stdout().is_terminal();
    let mut stop = std::pin::pin!(crate::schedules::stop_signal()?);
    let _screen = live.then(Screen::enter).transpose()?;
    let mut keys = if live { keys::listen() } else { None };
    let title = format!(
        "skiplock top, every {}{}",
        humantime::format_duration(args.interval),
        if keys.is_some() {
            " (q or Ctrl-C quits)"
        } else {
            " (Ctrl-C quits)"
        }
    );
    let mut frames = 0_u64;
    loop {
        let fetched = tokio::select! {
            fetched = overview(pool) => fetched,
            () = &mut stop => break,
            () = keys::quit(&mut keys) => break,
        };
        let now = Utc::now();
        let frame = match fetched {
            Ok(overview) => render(&overview, now, &title),
            // On a screen, a failed frame says why and the next one tries again.
            Err(error) if live => format!(
                "{title}  {}\n\nerror: {}\n",
                now.format("%Y-%m-%d %H:%M:%S UTC"),
                crate::one_line(&error)
            ),
            Err(error) => return Err(error),
        };
        if live {
            // Home, each line cleared to its end, then the rest of the screen cleared.
            let mut screen = String::from("\x1b[H");
            for line in frame.lines() {
                writeln!(screen, "{line}\x1b[K")?;
            }
            screen.push_str("\x1b[J");
            print(&screen)?;
        } else {
            print(&if frames == 0 {
                frame
            } else {
                format!("\n{frame}")
            })?;
        }
        frames += 1;
        if args.iterations.is_some_and(|n| frames >= n) {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            () = &mut stop => break,
            () = keys::quit(&mut keys) => break,
        }
    }
    Ok(())
}

/// The terminal's alternate screen with the cursor hidden, until dropped.
struct Screen;

impl Screen {
    fn enter() -> anyhow::Result<Self> {
        print("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J")?;
        Ok(Self)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = print("\x1b[?25h\x1b[?1049l");
    }
}

/// `q` on the terminal, read key by key (not line by line) while `top` runs.
#[cfg(unix)]
mod keys {
    use std::io::Read as _;
    use std::os::fd::AsFd as _;

    use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};
    use tokio::sync::mpsc;

    /// The keys `q` sends on, and the terminal's settings to restore when dropped.
    pub(super) struct Keys {
        pressed: mpsc::UnboundedReceiver<()>,
        original: Termios,
    }

    impl Drop for Keys {
        fn drop(&mut self) {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.original);
        }
    }

    /// Reads keys without waiting for Enter and without echoing them; `None` when standard
    /// input is not a terminal.
    pub(super) fn listen() -> Option<Keys> {
        let stdin = std::io::stdin();
        if !std::io::IsTerminal::is_terminal(&stdin) {
            return None;
        }
        let original = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = original.clone();
        raw.local_flags
            .remove(LocalFlags::ICANON | LocalFlags::ECHO);
        raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        let (sender, pressed) = mpsc::unbounded_channel();
        // A thread of its own, not the runtime's blocking pool: a runtime waits for its
        // blocking tasks at exit, and this read ends only with a key.
        std::thread::spawn(move || {
            let mut byte = [0_u8; 1];
            let mut stdin = std::io::stdin();
            while let Ok(1) = stdin.read(&mut byte) {
                if matches!(byte[0], b'q' | b'Q') {
                    let _ = sender.send(());
                    return;
                }
            }
        });
        Some(Keys { pressed, original })
    }

    /// Waits for `q` (for ever without a terminal).
    pub(super) async fn quit(keys: &mut Option<Keys>) {
        if let Some(keys) = keys
            && keys.pressed.recv().await.is_some()
        {
            return;
        }
        std::future::pending().await
    }
}

/// Without termios, only Ctrl-C quits.
#[cfg(not(unix))]
mod keys {
    pub(super) struct Keys;

    pub(super) fn listen() -> Option<Keys> {
        None
    }

    pub(super) async fn quit(_keys: &mut Option<Keys>) {
        std::future::pending().await
    }
}

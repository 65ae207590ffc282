//! `skiplock schedules ...` and `skiplock scheduler`.

use std::io::Write as _;

use anyhow::bail;
use skiplock::{Misfire, Schedule, Scheduler, SchedulerConfig, schedule};
use sqlx::PgPool;

use crate::cli::{AddScheduleArgs, SchedulerArgs, SchedulesCommand};

/// A schedules command with its input checked, before any connection is made: an invalid
/// expression or zone is refused here.
pub(crate) enum Prepared {
    List,
    Add(Box<Schedule>),
    Remove(String),
    Pause(String),
    Resume(String),
    RunNow(String),
}

pub(crate) fn prepare(command: SchedulesCommand) -> anyhow::Result<Prepared> {
    Ok(match command {
        SchedulesCommand::List => Prepared::List,
        SchedulesCommand::Add(args) => Prepared::Add(Box::new(schedule_of(args)?)),
        SchedulesCommand::Remove(name) => Prepared::Remove(name.name),
        SchedulesCommand::Pause(name) => Prepared::Pause(name.name),
        SchedulesCommand::Resume(name) => Prepared::Resume(name.name),
        SchedulesCommand::RunNow(name) => Prepared::RunNow(name.name),
    })
}

fn schedule_of(args: AddScheduleArgs) -> anyhow::Result<Schedule> {
    let json = crate::enqueue::arguments(&args.args, args.any_json)?;
    let misfire = match args.misfire.as_str() {
        "skip" => Misfire::Skip,
        "run-once" => Misfire::RunOnce,
        other => match other.strip_prefix("backfill=").map(str::parse::<u32>) {
            Some(Ok(n)) => Misfire::Backfill(n),
            _ => bail!("--misfire must be skip, run-once or backfill=N, not {other:?}"),
        },
    };
    let mut schedule = Schedule::untyped(&args.name, &args.cron, &args.kind, json)?
        .timezone(&args.tz)?
        .misfire(misfire);
    if let Some(queue) = args.queue {
        schedule = schedule.queue(queue);
    }
    if let Some(priority) = args.priority {
        schedule = schedule.priority(priority);
    }
    Ok(schedule)
}

pub(crate) async fn run(pool: &PgPool, command: Prepared) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let found = |found: bool, name: &str| {
        if found {
            Ok(())
        } else {
            Err(anyhow::anyhow!("no schedule named {name:?}"))
        }
    };
    match command {
        Prepared::List => {
            writeln!(
                out,
                "{:<20} {:<18} {:<16} {:<18} {:<16} {:<7} {:<25} last fire",
                "name", "cron", "timezone", "kind", "owner", "state", "next fire"
            )?;
            for s in schedule::list(pool).await? {
                let state = if !s.active {
                    "inactive"
                } else if s.paused {
                    "paused"
                } else {
                    "active"
                };
                // Runtime schedules have no owner; code ones from before owners show "-".
                let owner = s.owner.as_deref().unwrap_or(match s.source.as_str() {
                    "runtime" => "(runtime)",
                    _ => "-",
                });
                let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".to_owned())
                };
                writeln!(
                    out,
                    "{:<20} {:<18} {:<16} {:<18} {:<16} {:<7} {:<25} {}",
                    s.name,
                    s.cron,
                    s.timezone,
                    s.kind,
                    owner,
                    state,
                    time(s.next_fire_at),
                    time(s.last_fire_at)
                )?;
            }
        }
        Prepared::Add(schedule) => {
            schedule::add(pool, &schedule).await?;
            writeln!(out, "schedule {:?} saved", schedule.name())?;
        }
        Prepared::Remove(name) => {
            found(schedule::remove(pool, &name).await?, &name)?;
            writeln!(out, "schedule {name:?} removed")?;
        }
        Prepared::Pause(name) => {
            found(schedule::pause(pool, &name).await?, &name)?;
            writeln!(out, "schedule {name:?} paused")?;
        }
        Prepared::Resume(name) => {
            found(schedule::resume(pool, &name).await?, &name)?;
            writeln!(out, "schedule {name:?} resumed")?;
        }
        Prepared::RunNow(name) => match schedule::run_now(pool, &name).await? {
            Some(id) => writeln!(out, "{id}")?,
            None => found(false, &name)?,
        },
    }
    Ok(())
}

pub(crate) async fn scheduler(pool: PgPool, args: SchedulerArgs) -> anyhow::Result<()> {
    let stop = stop_signal()?;
    let config = SchedulerConfig {
        interval: args.interval,
        ..SchedulerConfig::default()
    };
    Scheduler::new(pool, config).run_until(stop).await;
    Ok(())
}

/// SIGINT or SIGTERM.
#[cfg(unix)]
pub(crate) fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use anyhow::Context as _;
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("could not listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("could not listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Ctrl-C.
#[cfg(not(unix))]
pub(crate) fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
}

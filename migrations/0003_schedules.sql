-- 0003: periodic jobs. Schedules are data, in skiplock.schedules; each fire time inserts
-- exactly one job, guaranteed by a unique index on (schedule, run_at) checked in the same
-- transaction as the insert. docs/schema.md documents all of it.

CREATE TABLE skiplock.schedules (
    name           text        PRIMARY KEY,
    cron           text        NOT NULL,
    timezone       text        NOT NULL DEFAULT 'UTC',
    kind           text        NOT NULL,
    args           jsonb       NOT NULL DEFAULT '{}',
    queue          text        NOT NULL DEFAULT 'default',
    priority       smallint    NOT NULL DEFAULT 0,
    max_attempts   integer     NOT NULL DEFAULT 25,
    misfire        text        NOT NULL DEFAULT 'skip',
    backfill_limit integer     NOT NULL DEFAULT 0,
    paused         boolean     NOT NULL DEFAULT false,
    active         boolean     NOT NULL DEFAULT true,
    source         text        NOT NULL DEFAULT 'runtime',
    next_fire_at   timestamptz,
    last_fire_at   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT schedules_name_length CHECK (char_length(name) BETWEEN 1 AND 128),
    CONSTRAINT schedules_kind_length CHECK (char_length(kind) BETWEEN 1 AND 128),
    CONSTRAINT schedules_queue_length CHECK (char_length(queue) BETWEEN 1 AND 128),
    CONSTRAINT schedules_max_attempts_positive CHECK (max_attempts >= 1),
    CONSTRAINT schedules_misfire_policy CHECK (misfire IN ('skip', 'run_once', 'backfill')),
    CONSTRAINT schedules_backfill_limit CHECK (backfill_limit >= 0),
    CONSTRAINT schedules_source CHECK (source IN ('code', 'runtime'))
);

COMMENT ON TABLE skiplock.schedules IS 'skiplock periodic jobs (cron schedules): see docs/schema.md.';

-- The scheduler's index: active, unpaused schedules by their next fire time.
CREATE INDEX schedules_due_idx ON skiplock.schedules (next_fire_at)
    WHERE active AND NOT paused;

-- Which schedule created a job; its run_at is the fire time.
ALTER TABLE skiplock.jobs ADD COLUMN schedule text;

-- Exactly one job per schedule and fire time, whatever number of schedulers run.
CREATE UNIQUE INDEX jobs_schedule_fire_idx ON skiplock.jobs (schedule, run_at)
    WHERE schedule IS NOT NULL;

-- 0009: schedules declared in code belong to an owner (a service), which alone deactivates them;
-- scheduled jobs carry tags and a timeout like every other enqueue; expressions have a length
-- cap. docs/schema.md documents all of it.

-- NULL for schedules added at runtime (CLI, SQL, `schedule::add`) and for those declared in code
-- before this migration; the first owner that declares such a schedule adopts it.
ALTER TABLE skiplock.schedules
    ADD COLUMN owner text
        CONSTRAINT schedules_owner_length CHECK (char_length(owner) BETWEEN 1 AND 128),
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}',
    ADD COLUMN timeout_secs double precision
        CONSTRAINT schedules_timeout_positive CHECK (timeout_secs > 0);

-- skiplock::MAX_CRON_LENGTH. NOT VALID: rows already stored are not scanned (a
-- longer one still parses as before); new and updated rows are checked.
ALTER TABLE skiplock.schedules ADD CONSTRAINT schedules_cron_length
    CHECK (char_length(cron) <= 256) NOT VALID;

-- The latest declaration of each owner. A worker's declaration applies only if its generation
-- is at least the stored one: during a rolling deploy, an old version starting after a new one
-- neither brings back the schedules the new version dropped nor drops the ones it added.
CREATE TABLE skiplock.schedule_owners (
    owner       text        PRIMARY KEY,
    generation  bigint      NOT NULL,
    declared_at timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT schedule_owners_owner_length CHECK (char_length(owner) BETWEEN 1 AND 128)
);

COMMENT ON TABLE skiplock.schedule_owners IS
    'skiplock: the latest schedule declaration of each owner (service): see docs/schema.md.';

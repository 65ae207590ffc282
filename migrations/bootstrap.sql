-- Bootstrap: the `skiplock` schema and its own migration bookkeeping.
--
-- skiplock never touches the application's `_sqlx_migrations` (or any other table outside this
-- schema). `skiplock::migrate` runs this file and every pending numbered migration in ONE
-- transaction holding a transaction-scoped advisory lock, so several processes may migrate at
-- the same time: the first applies, the others wait and then find nothing to do.
CREATE SCHEMA IF NOT EXISTS skiplock;

CREATE TABLE IF NOT EXISTS skiplock.migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE skiplock.migrations IS 'Migrations of the skiplock schema applied to this database.';

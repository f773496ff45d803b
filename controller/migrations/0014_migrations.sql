-- Migrations (R4, R5): the real move of an account to a shared host. Each
-- migration is a workflow of kind `migrate` (its state in
-- `workflows.state`); this row is the panel's view of it, written by the
-- kind's projection in the transaction that records each transition.

CREATE TABLE migrations (
    id              text PRIMARY KEY,
    request_id      text NOT NULL UNIQUE,
    account         text NOT NULL,
    migration_id    text NOT NULL,
    source_host_id  text NOT NULL REFERENCES hosts (id),
    target_host_id  text NOT NULL REFERENCES hosts (id),
    state           text NOT NULL CHECK (state IN
                        ('preparing', 'copying', 'replicating', 'converging', 'freezing',
                         'switched', 'completed', 'rolling_back', 'failed', 'cancelled')),
    -- The whole run as the workflow holds it (phase, backlog, freeze
    -- window, progress), for GetMigration and WatchMigration.
    run             jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX migrations_by_account ON migrations (account);
-- One migration in flight per account: a second one is refused.
CREATE UNIQUE INDEX migrations_one_in_flight ON migrations (account)
    WHERE state NOT IN ('completed', 'failed', 'cancelled');

-- Where an account lives once a migration switched it: the controller's
-- record, which wins over the old host's inventory (that host keeps the
-- old copy, stopped, for a grace period). `copy_id` is the copy the
-- target host holds the account as (the migration's id).
CREATE TABLE account_placements (
    account      text PRIMARY KEY,
    host_id      text NOT NULL REFERENCES hosts (id),
    copy_id      text NOT NULL,
    migration    text NOT NULL REFERENCES migrations (id),
    placed_at    timestamptz NOT NULL DEFAULT now()
);

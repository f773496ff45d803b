-- Tests (R3): duplicates of an account on a test host. Each row is also a
-- durable workflow: `step` is what runs next, `lease_owner` the controller
-- running it until `lease_expires_at`. A controller that dies loses its
-- lease; another one picks the step up, and agents make steps idempotent
-- by transfer id.

CREATE TABLE tests (
    id               text PRIMARY KEY,
    request_id       text NOT NULL UNIQUE,
    account          text NOT NULL,
    migration_id     text NOT NULL,
    source_host_id   text NOT NULL REFERENCES hosts (id),
    test_host_id     text NOT NULL REFERENCES hosts (id),
    state            text NOT NULL CHECK (state IN
                         ('placing', 'copying', 'ready', 'refreshing', 'failed', 'deleting', 'deleted')),
    step             text NOT NULL CHECK (step IN ('grant', 'copy', 'remove', 'none')),
    generation       integer NOT NULL DEFAULT 1,
    -- What the copy is made of (homes, databases, servers), and how to
    -- reach it once ready.
    plan             jsonb NOT NULL,
    connection       jsonb,
    progress         jsonb,
    error            text NOT NULL DEFAULT '',
    ttl_seconds      bigint NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    ready_at         timestamptz,
    expires_at       timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    next_run_at      timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz
);
CREATE INDEX tests_due ON tests (next_run_at) WHERE step <> 'none';
CREATE INDEX tests_by_account ON tests (account);
-- One live test per account and migration.
CREATE UNIQUE INDEX tests_one_live ON tests (account, migration_id)
    WHERE state NOT IN ('failed', 'deleted');

-- Every step a controller ran, when and with what outcome: the audit trail
-- of workflows (and how tests check that a step ran once).
CREATE TABLE step_runs (
    id          bigserial PRIMARY KEY,
    workflow_id text NOT NULL,
    step        text NOT NULL,
    generation  integer NOT NULL,
    controller  text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome     text
);
CREATE INDEX step_runs_by_workflow ON step_runs (workflow_id);

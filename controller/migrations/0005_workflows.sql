-- Durable workflows of every kind (issue 8): one row per workflow, its
-- inbox of events, and its audit trail. The engine (`controller/src/engine`)
-- owns these tables; a kind only sees its own state, serialised in `state`.
--
-- A workflow is due when `next_run_at <= now()` and its lease is free:
-- a runner claims it (`FOR UPDATE SKIP LOCKED`), bumping `fencing`, and
-- records what happened only while `fencing` is still the value it got.
-- Waiting without a timer is `next_run_at = 'infinity'`.

CREATE TABLE workflows (
    id                    text PRIMARY KEY,
    kind                  text NOT NULL,
    state                 jsonb NOT NULL,
    -- The step to run next (the kind's own value); NULL while waiting.
    step                  jsonb,
    -- Runs of `step` so far (reset when the step changes).
    attempts              integer NOT NULL DEFAULT 0,
    next_run_at           timestamptz NOT NULL DEFAULT now(),
    -- Set while waiting with a timer: when `Timer` is delivered.
    timer_at              timestamptz,
    lease_owner           text,
    lease_expires_at      timestamptz,
    fencing               bigint NOT NULL DEFAULT 0,
    parent_id             text REFERENCES workflows (id),
    point_of_no_return_at timestamptz,
    -- Who asked for what the workflow does next (the sender of the last
    -- command it consumed, or its creator), and when: the audit entry of
    -- the point of no return names them.
    requested_by          text NOT NULL,
    requested_at          timestamptz NOT NULL DEFAULT now(),
    done                  boolean NOT NULL DEFAULT false,
    outcome               text CHECK (outcome IN ('completed', 'failed', 'cancelled')),
    error                 text NOT NULL DEFAULT '',
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (done = (outcome IS NOT NULL))
);
CREATE INDEX workflows_due ON workflows (next_run_at) WHERE NOT done;
CREATE INDEX workflows_by_parent ON workflows (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX workflows_by_kind ON workflows (kind, created_at);

-- The inbox: events consumed in `id` order by the workflow's runner.
CREATE TABLE workflow_events (
    id          bigserial PRIMARY KEY,
    workflow_id text NOT NULL REFERENCES workflows (id),
    -- start, cancel, command, child_finished.
    kind        text NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}',
    sender      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    consumed_at timestamptz
);
CREATE INDEX workflow_events_pending ON workflow_events (workflow_id, id)
    WHERE consumed_at IS NULL;

-- Every step run (with its outcome), command received or refused, point of
-- no return passed, compensation and end. Step entries are written in the
-- transaction that records the step's outcome, under the fencing token:
-- a step appears here once per recorded run.
CREATE TABLE workflow_audit (
    id          bigserial PRIMARY KEY,
    workflow_id text NOT NULL REFERENCES workflows (id),
    at          timestamptz NOT NULL DEFAULT now(),
    -- created, step, compensation, event, command, command_refused,
    -- point_of_no_return, done.
    what        text NOT NULL,
    step        jsonb,
    who         text NOT NULL,
    detail      text NOT NULL DEFAULT '',
    -- For step runs: when the step became due and when it started.
    due_at      timestamptz,
    started_at  timestamptz
);
CREATE INDEX workflow_audit_by_workflow ON workflow_audit (workflow_id, id);

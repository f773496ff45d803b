-- Tests run on the workflow engine (issue 8): each test's state is its
-- workflow's (`workflows.state`, kind `test`), and the `tests` row is the
-- panel's view of it, written in the transaction that records each
-- transition. Leases, fencing and timers are the engine's.
--
-- Every test that is not deleted gets its workflow here, from its row: a
-- pending step is due at once (a step a controller was running when it
-- stopped runs again, as it would have after its lease expired: agents
-- make it harmless by transfer id); a test with no step waits for a
-- command until its expiry (`timer_at`; one never recorded fires at once
-- and is armed by the test's own rules). Deleted tests have nothing left
-- to do and get none.

INSERT INTO workflows (id, kind, state, step, next_run_at, timer_at, requested_by,
                       created_at, updated_at)
SELECT t.id, 'test',
       jsonb_build_object(
           'id', t.id, 'account', t.account, 'migration_id', t.migration_id,
           'source_host_id', t.source_host_id, 'test_host_id', t.test_host_id,
           'state', t.state, 'step', t.step, 'generation', t.generation,
           'plan', t.plan, 'progress', t.progress, 'error', t.error,
           'ttl_seconds', t.ttl_seconds, 'created_at', t.created_at,
           'updated_at', t.updated_at, 'ready_at', t.ready_at,
           'expires_at', t.expires_at, 'attempts', t.attempts,
           'outage', CASE WHEN t.outage_host IS NOT NULL AND t.outage_since IS NOT NULL
                          THEN jsonb_build_array(t.outage_host, t.outage_since) END),
       CASE WHEN t.step <> 'none' THEN to_jsonb(t.step) END,
       CASE WHEN t.step <> 'none' THEN now() ELSE COALESCE(t.expires_at, now()) END,
       CASE WHEN t.step = 'none' THEN COALESCE(t.expires_at, now()) END,
       'upgrade', t.created_at, now()
FROM tests t
WHERE t.state <> 'deleted'
ON CONFLICT (id) DO NOTHING;

INSERT INTO workflow_audit (workflow_id, what, who, detail)
SELECT t.id, 'created', 'upgrade',
       'test workflow, for test ' || t.id || ' (' || t.state || ', step ' || t.step
       || ') recorded before tests ran on the engine'
FROM tests t JOIN workflows w ON w.id = t.id AND w.kind = 'test'
WHERE w.requested_by = 'upgrade';

-- The tests-only lease and schedule are gone: an older controller still
-- running against this database fails its claims loudly instead of running
-- steps the engine runs too.
DROP INDEX tests_due;
ALTER TABLE tests DROP COLUMN next_run_at,
                  DROP COLUMN lease_owner,
                  DROP COLUMN lease_expires_at;

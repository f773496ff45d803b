-- A test runs the account's sites on the test host: the step `sites`
-- (between the copy and readiness), and whether a host's web server runs
-- (as its agent reports), so that a test host without one gets copies
-- without their sites.
ALTER TABLE tests DROP CONSTRAINT IF EXISTS tests_step_check;
ALTER TABLE tests ADD CONSTRAINT tests_step_check
    CHECK (step IN ('grant', 'copy', 'sites', 'remove', 'none'));
ALTER TABLE hosts ADD COLUMN serves_sites boolean NOT NULL DEFAULT false;

-- Each account's sites as its agent reports them (navette.v1.Site as
-- JSON: domains, document_root, runtime), so that a test can start them
-- on the test host. Empty: none, or an agent from before sites.
ALTER TABLE host_accounts ADD COLUMN sites jsonb NOT NULL DEFAULT '[]'::jsonb;

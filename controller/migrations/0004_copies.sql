-- Copies are not accounts. An agent reports the homes that are copies made
-- by Navette (a test's copy on a test host) with the copy's id; they are
-- kept apart from the accounts, so an account is listed once, where it
-- lives, and its copies as copies of their tests.
ALTER TABLE host_accounts ADD COLUMN copy_of_test text NOT NULL DEFAULT '';

-- A test being deleted is not live: deleting an old failed test of an
-- account must not collide with the account's newer test. Their copies
-- cannot collide either: each copy is removed by its own id, and a new copy
-- waits for an old one that holds its home to be removed.
DROP INDEX tests_one_live;
CREATE UNIQUE INDEX tests_one_live ON tests (account, migration_id)
    WHERE state NOT IN ('failed', 'deleting', 'deleted');

-- The host a test's step cannot reach, and since when (cleared once the
-- step gets through): shown on WatchTest while the step is retried.
ALTER TABLE tests ADD COLUMN outage_host text;
ALTER TABLE tests ADD COLUMN outage_since timestamptz;

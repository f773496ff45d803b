-- The transfer protocol versions each host's agent speaks, as a source and
-- as a target, from its last inventory (ascending). Empty: not reported (an
-- agent from before versions were reported; placement takes it as speaking
-- version 2 only). Placement pairs a source and a target only on a version
-- both speak, and a test's plan records the one chosen.
ALTER TABLE hosts ADD COLUMN source_protocols int4[] NOT NULL DEFAULT '{}';
ALTER TABLE hosts ADD COLUMN target_protocols int4[] NOT NULL DEFAULT '{}';

-- What a host is, decided by an operator, and identities that can be
-- withdrawn.
--
-- `hosts.kind` becomes the operator's: set from the join token (or
-- Hosts/SetHostClass), never from an agent's report. What the agent says is
-- kept in `reported_kind` and shown as a warning when it disagrees. Hosts
-- enrolled before this migration keep the kind they had, which their
-- operators accepted when they deployed them.
--
-- `certificate_serial` is the one agent certificate of the host that is
-- still good: every other (superseded by a renewal or a re-enrolment, or
-- revoked) is refused on every port.

ALTER TABLE hosts
    ADD COLUMN reported_kind text,
    -- The host's class: the disk the operator says it has (NULL: not given).
    -- Placement never counts more free space than this.
    ADD COLUMN declared_disk_bytes bigint CHECK (declared_disk_bytes > 0),
    ADD COLUMN certificate_serial text,
    ADD COLUMN removed_at timestamptz,
    ADD COLUMN removed_by text,
    ADD COLUMN removed_reason text;

UPDATE hosts SET reported_kind = kind;

UPDATE hosts h SET certificate_serial = latest.serial
FROM (SELECT DISTINCT ON (host_id) host_id, serial FROM agent_certificates
      ORDER BY host_id, issued_at DESC) AS latest
WHERE latest.host_id = h.id;

ALTER TABLE hosts DROP CONSTRAINT hosts_state_check;
ALTER TABLE hosts ADD CONSTRAINT hosts_state_check
    CHECK (state IN ('awaiting_enrolment', 'online', 'unreachable', 'removed'));

ALTER TABLE join_tokens
    ADD COLUMN kind text CHECK (kind IN ('shared', 'dedicated', 'vps', 'transit', 'test')),
    ADD COLUMN declared_disk_bytes bigint CHECK (declared_disk_bytes > 0);

ALTER TABLE agent_certificates
    ADD COLUMN revoked_at timestamptz,
    ADD COLUMN revoked_by text,
    ADD COLUMN revoked_reason text;
CREATE INDEX agent_certificates_unexpired ON agent_certificates (not_after);
-- "Is there a later enrolment of this host?" (the peers' refused list).
CREATE INDEX agent_certificates_by_host ON agent_certificates (host_id, issued_at);

-- Who changed what a host is or may do, and why.
CREATE TABLE host_audit (
    id       bigserial PRIMARY KEY,
    host_id  text NOT NULL,
    action   text NOT NULL,
    actor    text NOT NULL,
    detail   text NOT NULL DEFAULT '',
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX host_audit_by_host ON host_audit (host_id, at);

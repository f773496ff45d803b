-- Hosts, their pools and accounts, and the join tokens with which agents
-- enrol. Times are the database's (now()), so that several controllers agree.

CREATE TABLE host_pools (
    name        text PRIMARY KEY,
    description text NOT NULL DEFAULT '',
    request_id  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE hosts (
    id                     text PRIMARY KEY,
    -- NULL until the agent's first inventory.
    kind                   text CHECK (kind IN ('shared', 'dedicated', 'vps', 'transit', 'test')),
    state                  text NOT NULL CHECK (state IN ('awaiting_enrolment', 'online', 'unreachable')),
    draining               boolean NOT NULL DEFAULT false,
    pool                   text REFERENCES host_pools (name),
    stack_version          text NOT NULL DEFAULT '',
    agent_version          text NOT NULL DEFAULT '',
    agent_endpoint         text NOT NULL DEFAULT '',
    addresses              text[] NOT NULL DEFAULT '{}',
    disk_total_bytes       bigint NOT NULL DEFAULT 0,
    disk_free_bytes        bigint NOT NULL DEFAULT 0,
    database_servers       jsonb NOT NULL DEFAULT '[]',
    inventory_digest       text NOT NULL DEFAULT '',
    enrolled_at            timestamptz,
    last_heartbeat_at      timestamptz,
    inventory_updated_at   timestamptz,
    certificate_expires_at timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now()
);

-- Accounts as each host's agent reports them. An account normally lives on
-- one host; during a test or a migration a copy may be reported elsewhere.
CREATE TABLE host_accounts (
    host_id         text NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    name            text NOT NULL,
    home            text NOT NULL,
    uid             bigint NOT NULL,
    home_size_bytes bigint NOT NULL,
    home_files      bigint NOT NULL,
    databases       jsonb NOT NULL DEFAULT '[]',
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (host_id, name)
);
CREATE INDEX host_accounts_by_name ON host_accounts (name);

-- Join tokens. The secret is an HMAC of the id under a key derived from the
-- CA key: it is never stored.
CREATE TABLE join_tokens (
    id         text PRIMARY KEY,
    request_id text NOT NULL UNIQUE,
    host_id    text NOT NULL,
    pool       text REFERENCES host_pools (name),
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    revoked_at timestamptz
);

-- Every certificate issued to an agent (audit, and later revocation).
CREATE TABLE agent_certificates (
    serial     text PRIMARY KEY,
    host_id    text NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    not_after  timestamptz NOT NULL,
    -- 'enrolment' or 'renewal'
    reason     text NOT NULL
);

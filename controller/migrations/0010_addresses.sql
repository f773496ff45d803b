-- IP rerouting (R7): where each moved address of a dedicated server or VPS
-- is held, and every move that put it there. An address is recorded at its
-- first move; until then it is simply on its server (as the server's
-- agent reports). Moves are never deleted: they are how an operator sees
-- how an address got where it is.
CREATE TABLE server_addresses (
    -- Canonical text of the IP address (no prefix length).
    address          text PRIMARY KEY,
    server_host_id   text NOT NULL REFERENCES hosts (id),
    prefix_length    integer NOT NULL CHECK (prefix_length BETWEEN 1 AND 128),
    -- Where the last finished move put it.
    held_by_host_id  text NOT NULL REFERENCES hosts (id),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX server_addresses_by_server ON server_addresses (server_host_id);

CREATE TABLE address_moves (
    operation_id     text PRIMARY KEY,
    address          text NOT NULL REFERENCES server_addresses (address),
    server_host_id   text NOT NULL REFERENCES hosts (id),
    from_host_id     text NOT NULL REFERENCES hosts (id),
    to_host_id       text NOT NULL REFERENCES hosts (id),
    mode             text NOT NULL CHECK (mode IN ('layer2', 'routed')),
    requested_by     text NOT NULL,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    outcome          text NOT NULL CHECK (outcome IN ('running', 'done', 'failed')),
    error            text NOT NULL DEFAULT '',
    provider_ms      integer NOT NULL DEFAULT 0
);
CREATE INDEX address_moves_by_address ON address_moves (address, requested_at);
-- One running move per address, whichever controller runs it.
CREATE UNIQUE INDEX address_moves_one_running ON address_moves (address)
    WHERE outcome = 'running';

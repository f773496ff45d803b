-- The transit pool (R9): what configuration class each host is, and the
-- allocations of transit hosts to dedicated servers and VPS, with their
-- queue and what billing needs.
--
-- `hosts.configuration_class` is the operator's word (CPU, memory, disk
-- under one name, e.g. `c8-m32-d960`), set with
-- TransitPool/SetConfigurationClass; a transit host serves only servers
-- of its class.
ALTER TABLE hosts ADD COLUMN configuration_class text;

-- One row per request for transit. `waiting` rows are the queue of their
-- class, first come first served by `queued_seq`; `active` and `wiping`
-- rows hold their transit host (at most one each, by the index below);
-- `released` rows are history, with what billing reads.
CREATE TABLE transit_allocations (
    id                  text PRIMARY KEY,
    request_id          text NOT NULL UNIQUE,
    server_host_id      text NOT NULL REFERENCES hosts (id),
    configuration_class text NOT NULL,
    state               text NOT NULL
        CHECK (state IN ('waiting', 'active', 'wiping', 'released', 'cancelled')),
    transit_host_id     text REFERENCES hosts (id),
    queued_seq          bigserial NOT NULL,
    -- The server's own price, as the panel or the operator gave it with
    -- the request: integer minor units of `currency`, per month or per day.
    price_minor_units   bigint NOT NULL CHECK (price_minor_units >= 0),
    price_period        text NOT NULL CHECK (price_period IN ('month', 'day')),
    currency            text NOT NULL,
    requested_by        text NOT NULL,
    requested_at        timestamptz NOT NULL DEFAULT now(),
    -- When the transit host was handed over (billing starts here) and
    -- when it was released (billing ends here).
    started_at          timestamptz,
    ended_at            timestamptz,
    -- The free period in force when the allocation started, in seconds.
    free_seconds        bigint NOT NULL DEFAULT 0,
    wipe_error          text NOT NULL DEFAULT '',
    CHECK ((state = 'waiting') = (transit_host_id IS NULL) OR state = 'cancelled'),
    CHECK (state IN ('waiting', 'cancelled') OR started_at IS NOT NULL)
);

-- A transit host serves one allocation at a time, wiping included.
CREATE UNIQUE INDEX transit_allocations_one_per_host ON transit_allocations (transit_host_id)
    WHERE state IN ('active', 'wiping');
-- A server waits for, or holds, one transit host at a time.
CREATE UNIQUE INDEX transit_allocations_one_per_server ON transit_allocations (server_host_id)
    WHERE state IN ('waiting', 'active', 'wiping');
CREATE INDEX transit_allocations_queue ON transit_allocations (configuration_class, queued_seq)
    WHERE state = 'waiting';

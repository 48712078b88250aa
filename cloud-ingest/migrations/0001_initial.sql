-- rae cloud registry, schema version 1.
-- Runs unchanged on PostgreSQL and CockroachDB (rules: docs/CLOUD.md):
-- every statement is idempotent (IF NOT EXISTS), keys are explicit (no
-- SERIAL / sequences), only portable types.

-- One row per agent (box), from its retained birth / last-will messages.
CREATE TABLE IF NOT EXISTS boxes (
    rae_id          TEXT        NOT NULL PRIMARY KEY,
    online          BOOLEAN     NOT NULL,
    agent_version   TEXT,
    started_ms      BIGINT,
    boot_count      BIGINT,
    last_birth_ms   BIGINT,
    last_will_ms    BIGINT,
    updated_at      TIMESTAMPTZ NOT NULL
);

-- One row per device ever seen on a box; current_session_id is the newest
-- session (UUIDv7 sorts by time).
CREATE TABLE IF NOT EXISTS devices (
    rae_id              TEXT        NOT NULL,
    device_id           TEXT        NOT NULL,
    current_session_id  UUID        NOT NULL,
    first_seen_at       TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (rae_id, device_id)
);

-- One row per attachment of a device.
CREATE TABLE IF NOT EXISTS device_sessions (
    session_id      UUID        NOT NULL PRIMARY KEY,
    rae_id          TEXT        NOT NULL,
    device_id       TEXT        NOT NULL,
    last_seq        BIGINT      NOT NULL,
    stale           BOOLEAN     NOT NULL,
    stale_expected  BIGINT,
    stale_got       BIGINT,
    last_resync_ms  BIGINT,
    started_ms      BIGINT,
    ended_ms        BIGINT,
    end_reason      TEXT,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS device_sessions_by_device
    ON device_sessions (rae_id, device_id);

-- The current attributes of a session, one row per attribute (normalised).
-- value is the text rendering, value_type one of text, int, bool, float.
CREATE TABLE IF NOT EXISTS device_attributes (
    session_id      UUID        NOT NULL,
    name            TEXT        NOT NULL,
    value_type      TEXT        NOT NULL,
    value           TEXT        NOT NULL,
    updated_seq     BIGINT      NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (session_id, name)
);
CREATE INDEX IF NOT EXISTS device_attributes_by_value
    ON device_attributes (name, value);

-- Bounded history of applied envelopes: at most
-- registry.history_max_events_per_session rows per session, unique by
-- (session_id, seq) so a redelivered batch adds nothing.
CREATE TABLE IF NOT EXISTS device_events (
    session_id      UUID        NOT NULL,
    seq             BIGINT      NOT NULL,
    kind            TEXT        NOT NULL,
    ts_ms           BIGINT      NOT NULL,
    envelope        BYTEA       NOT NULL,
    kafka_partition INTEGER     NOT NULL,
    kafka_offset    BIGINT      NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (session_id, seq)
);

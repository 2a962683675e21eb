-- Initial schema of the Warren control-plane store.
--
-- Portability rules (SQLite now, PostgreSQL later):
--   * ids are TEXT; timestamps are BIGINT unix milliseconds (BIGINT has
--     INTEGER affinity in SQLite and is 64-bit in PostgreSQL, where INTEGER
--     would overflow);
--   * JSON documents are TEXT, never a JSON column type;
--   * enumerations are TEXT guarded by CHECK constraints;
--   * no AUTOINCREMENT, no WITHOUT ROWID, no SQLite-only functions.

CREATE TABLE workspaces (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);

CREATE UNIQUE INDEX workspaces_name ON workspaces (name);

-- API tokens. Only the SHA-256 of the secret is stored (hex, lowercase).
CREATE TABLE tokens (
    id            TEXT     NOT NULL PRIMARY KEY,
    workspace_id  TEXT     NOT NULL REFERENCES workspaces (id),
    name          TEXT     NOT NULL,
    token_hash    TEXT     NOT NULL,
    is_admin      BOOLEAN  NOT NULL DEFAULT FALSE,
    created_at    BIGINT   NOT NULL,
    last_used_at  BIGINT,
    revoked_at    BIGINT
);

CREATE UNIQUE INDEX tokens_hash ON tokens (token_hash);
CREATE INDEX tokens_workspace ON tokens (workspace_id, created_at, id);

CREATE TABLE sandboxes (
    id                 TEXT     NOT NULL PRIMARY KEY,
    workspace_id       TEXT     NOT NULL REFERENCES workspaces (id),
    name               TEXT,
    image              TEXT     NOT NULL,
    -- JSON: command, env, workdir, cpu, memory_mib, disk_mib, timeout_secs,
    -- idle_timeout_secs.
    spec               TEXT     NOT NULL,
    -- JSON object of string to string; mirrored in sandbox_tags.
    tags               TEXT     NOT NULL,
    state              TEXT     NOT NULL
        CHECK (state IN ('creating', 'running', 'terminating', 'terminated')),
    reason             TEXT
        CHECK (reason IS NULL OR reason IN ('exited', 'timeout', 'idle_timeout',
            'oom_killed', 'terminated', 'node_restart', 'error')),
    exit_code          INTEGER,
    reason_detail      TEXT,
    -- Copies of the spec's timeouts, so that expiry can be computed in SQL.
    timeout_secs       BIGINT,
    idle_timeout_secs  BIGINT,
    created_at         BIGINT   NOT NULL,
    started_at         BIGINT,
    ended_at           BIGINT,
    deadline_at        BIGINT,
    last_activity_at   BIGINT   NOT NULL,
    node_id            TEXT     NOT NULL
);

-- Listing: newest first, keyset pagination on (created_at, id).
CREATE INDEX sandboxes_list ON sandboxes (workspace_id, created_at, id);
-- Listing with a state filter.
CREATE INDEX sandboxes_list_state ON sandboxes (workspace_id, state, created_at, id);
-- Listing with a name filter (any state).
CREATE INDEX sandboxes_name ON sandboxes (workspace_id, name, created_at, id);
-- A name is unique among a workspace's sandboxes that are not terminated.
-- Partial indexes have the same syntax and meaning in SQLite and PostgreSQL.
CREATE UNIQUE INDEX sandboxes_live_name ON sandboxes (workspace_id, name)
    WHERE state <> 'terminated';
-- Restart recovery and the expiry sweep (all workspaces).
CREATE INDEX sandboxes_state ON sandboxes (state, deadline_at);

-- One row per tag, for filtering. `workspace_id` and `created_at` are
-- copies of the sandbox's (both immutable), so that a tag filter can walk
-- `sandbox_tags_list` in page order and stop after one page, however rare
-- or common the tag is.
CREATE TABLE sandbox_tags (
    sandbox_id    TEXT    NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    workspace_id  TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    key           TEXT    NOT NULL,
    value         TEXT    NOT NULL,
    PRIMARY KEY (sandbox_id, key)
);

CREATE INDEX sandbox_tags_list
    ON sandbox_tags (workspace_id, key, value, created_at, sandbox_id);

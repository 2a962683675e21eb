-- no-transaction
-- Issue #8: memory snapshots, pause and resume.
--
-- A new lifecycle state, `paused` (checkpointed and released; it goes back
-- to `running` on resume), with the time it was paused (`paused_at`, to
-- move the deadline on resume: no timeout runs while paused). SQLite cannot
-- change a CHECK constraint in place, so `sandboxes` is rebuilt with
-- SQLite's documented procedure (foreign keys off around a transaction, so
-- the rows of `sandbox_tags`, `relay_ports` and `connect_tokens` that
-- reference it are not cascaded away by the DROP). This file is therefore
-- SQLite-specific (marked `no-transaction` so it can turn foreign keys off;
-- it opens its own transaction); on PostgreSQL the same change is
-- `ALTER TABLE sandboxes DROP CONSTRAINT ..., ADD CONSTRAINT ... CHECK
-- (state IN (...)), ADD COLUMN paused_at BIGINT` plus the CREATE TABLE
-- below, which is portable as written.
PRAGMA foreign_keys = OFF;

BEGIN;

CREATE TABLE sandboxes_new (
    id                 TEXT     NOT NULL PRIMARY KEY,
    workspace_id       TEXT     NOT NULL REFERENCES workspaces (id),
    name               TEXT,
    image              TEXT     NOT NULL,
    spec               TEXT     NOT NULL,
    tags               TEXT     NOT NULL,
    state              TEXT     NOT NULL
        CHECK (state IN ('creating', 'running', 'paused', 'terminating', 'terminated')),
    reason             TEXT
        CHECK (reason IS NULL OR reason IN ('exited', 'timeout', 'idle_timeout',
            'oom_killed', 'terminated', 'node_restart', 'error')),
    exit_code          INTEGER,
    reason_detail      TEXT,
    timeout_secs       BIGINT,
    idle_timeout_secs  BIGINT,
    created_at         BIGINT   NOT NULL,
    started_at         BIGINT,
    ended_at           BIGINT,
    deadline_at        BIGINT,
    last_activity_at   BIGINT   NOT NULL,
    node_id            TEXT     NOT NULL,
    image_id           TEXT,
    paused_at          BIGINT
);

INSERT INTO sandboxes_new (id, workspace_id, name, image, spec, tags, state, reason,
    exit_code, reason_detail, timeout_secs, idle_timeout_secs, created_at, started_at,
    ended_at, deadline_at, last_activity_at, node_id, image_id)
SELECT id, workspace_id, name, image, spec, tags, state, reason,
    exit_code, reason_detail, timeout_secs, idle_timeout_secs, created_at, started_at,
    ended_at, deadline_at, last_activity_at, node_id, image_id
FROM sandboxes;

DROP TABLE sandboxes;
ALTER TABLE sandboxes_new RENAME TO sandboxes;

CREATE INDEX sandboxes_list ON sandboxes (workspace_id, created_at, id);
CREATE INDEX sandboxes_list_state ON sandboxes (workspace_id, state, created_at, id);
CREATE INDEX sandboxes_name ON sandboxes (workspace_id, name, created_at, id);
CREATE UNIQUE INDEX sandboxes_live_name ON sandboxes (workspace_id, name)
    WHERE state <> 'terminated';
CREATE INDEX sandboxes_state ON sandboxes (state, deadline_at);

-- Memory snapshots (checkpoints) taken through the API. The checkpoint
-- itself is a directory on the node (`<data>/memory-snapshots/<id>`); this
-- row is what the API lists, and what keeps the image it stands on. `spec`
-- is the source sandbox's spec (JSON), which restored sandboxes inherit.
CREATE TABLE memory_snapshots (
    id            TEXT     NOT NULL PRIMARY KEY,
    workspace_id  TEXT     NOT NULL REFERENCES workspaces (id),
    sandbox_id    TEXT     NOT NULL,
    image         TEXT     NOT NULL,
    image_id      TEXT     NOT NULL,
    spec          TEXT     NOT NULL,
    bytes         BIGINT   NOT NULL,
    created_at    BIGINT   NOT NULL,
    expires_at    BIGINT,
    node_id       TEXT     NOT NULL
);

CREATE INDEX memory_snapshots_list ON memory_snapshots (workspace_id, created_at, id);
CREATE INDEX memory_snapshots_expiry ON memory_snapshots (expires_at);

COMMIT;

PRAGMA foreign_keys = ON;

-- Issue #8: pause and resume, memory snapshots, snapshot images with a TTL.
--
-- Pausing. SQLite cannot change a CHECK constraint without rebuilding the
-- table (and a rebuild would cascade-delete the tag, relay-port and token
-- rows that reference it), so the pause sub-state is its own column: a
-- paused sandbox has state 'running' and suspend 'paused'. The store's
-- decoding turns that pair into the `paused` state (likewise `pausing`,
-- `resuming`); every query that means "running" also says
-- `suspend IS NULL`. The name stays reserved while paused.
ALTER TABLE sandboxes ADD COLUMN suspend TEXT
    CHECK (suspend IS NULL OR suspend IN ('pausing', 'paused', 'resuming'));
-- When the pause finished.
ALTER TABLE sandboxes ADD COLUMN paused_at BIGINT;
-- Milliseconds of `timeout_secs` left when it paused (NULL without a
-- timeout); the deadline is cleared while paused and set from this again
-- on resume, so no timeout runs while paused.
ALTER TABLE sandboxes ADD COLUMN remaining_ms BIGINT;

-- Memory snapshots (checkpoints) taken with snapshot-memory or for a fork.
-- The files live on the node that took them (`node_id`), in
-- <data_dir>/memory-snapshots/<id>/.
CREATE TABLE memory_snapshots (
    id            TEXT     NOT NULL PRIMARY KEY,
    workspace_id  TEXT     NOT NULL REFERENCES workspaces (id),
    sandbox_id    TEXT     NOT NULL,
    -- The source sandbox's image reference and resolved id.
    image         TEXT     NOT NULL,
    image_id      TEXT,
    -- JSON: the source sandbox's spec (what a restore inherits).
    spec          TEXT     NOT NULL,
    size_bytes    BIGINT   NOT NULL,
    took_ms       BIGINT   NOT NULL,
    created_at    BIGINT   NOT NULL,
    expires_at    BIGINT,
    node_id       TEXT     NOT NULL
);

CREATE INDEX memory_snapshots_list ON memory_snapshots (workspace_id, created_at, id);
CREATE INDEX memory_snapshots_expiry ON memory_snapshots (expires_at);

-- Images made by snapshots that have a TTL: removed once expired and no
-- sandbox uses them.
CREATE TABLE image_expiry (
    image_id    TEXT    NOT NULL PRIMARY KEY,
    expires_at  BIGINT  NOT NULL
);

CREATE INDEX image_expiry_at ON image_expiry (expires_at);

-- Issue #7: relay ports and connect tokens.
--
-- A sandbox's exposed ports, egress policy and readiness probe live in its
-- `spec` JSON. Raw TCP ports of the relay are a shared resource, so each
-- assignment is a row here; the primary key makes two sandboxes holding the
-- same relay port impossible. Rows are deleted when the sandbox ends.
CREATE TABLE relay_ports (
    relay_port  INTEGER  NOT NULL PRIMARY KEY,
    sandbox_id  TEXT     NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    port        INTEGER  NOT NULL
);

CREATE INDEX relay_ports_sandbox ON relay_ports (sandbox_id);

-- Connect tokens are signed and stateless; only their metadata is kept, for
-- listing and revocation. The token itself is never stored.
CREATE TABLE connect_tokens (
    id            TEXT     NOT NULL PRIMARY KEY,
    sandbox_id    TEXT     NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    workspace_id  TEXT     NOT NULL REFERENCES workspaces (id),
    port          INTEGER  NOT NULL,
    created_at    BIGINT   NOT NULL,
    expires_at    BIGINT   NOT NULL,
    revoked_at    BIGINT
);

CREATE INDEX connect_tokens_sandbox ON connect_tokens (sandbox_id, created_at, id);

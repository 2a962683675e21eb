-- The image id (sha256:...) a sandbox was created from, once resolved: the
-- node's image store must not garbage-collect it while the sandbox lives.
ALTER TABLE sandboxes ADD COLUMN image_id TEXT;

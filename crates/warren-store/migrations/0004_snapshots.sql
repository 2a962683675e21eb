-- Issue #8: filesystem snapshots into images.
--
-- Images made by snapshots that have a TTL: removed once expired and no
-- sandbox uses or mounts them. (Image mounts themselves are part of a
-- sandbox's `spec` JSON.)
CREATE TABLE image_expiry (
    image_id    TEXT    NOT NULL PRIMARY KEY,
    expires_at  BIGINT  NOT NULL
);

CREATE INDEX image_expiry_at ON image_expiry (expires_at);

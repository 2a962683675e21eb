//! Opaque keyset-pagination cursors.
//!
//! A cursor names the last row of a page by its sort key
//! `(created_at, id)`; the next page holds the rows strictly after it in
//! `(created_at DESC, id DESC)` order. Keyset pagination (rather than
//! `OFFSET`) keeps a deep page as cheap as the first and never skips or
//! repeats a row when rows are inserted between requests.
//!
//! The encoding is hex of `v1:<created_at>:<id>`. Clients must treat it as
//! opaque; the version tag lets the format change later.

use crate::error::{Result, StoreError};
use crate::ids::validate_id;

const VERSION: &str = "v1";

/// The position after which the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub created_at: i64,
    pub id: String,
}

impl Cursor {
    pub(crate) fn encode(&self) -> String {
        hex::encode(format!("{VERSION}:{}:{}", self.created_at, self.id))
    }

    pub(crate) fn decode(s: &str) -> Result<Cursor> {
        let bad = || StoreError::invalid("cursor", "not a cursor returned by this server");
        // A cursor is short; refuse to hex-decode anything large.
        if s.len() > 256 {
            return Err(bad());
        }
        let bytes = hex::decode(s).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let mut parts = text.splitn(3, ':');
        let (Some(VERSION), Some(created_at), Some(id)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let created_at = created_at.parse::<i64>().map_err(|_| bad())?;
        validate_id("cursor", id).map_err(|_| bad())?;
        Ok(Cursor {
            created_at,
            id: id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let c = Cursor {
            created_at: 1_700_000_000_123,
            id: "sb-abc".to_owned(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "zz",
            "not hex",
            &hex::encode("v2:1:sb-a"),
            &hex::encode("v1:x:sb-a"),
            &hex::encode("v1:1:SB'--"),
            &hex::encode("v1:1"),
        ] {
            let err = Cursor::decode(s).unwrap_err();
            assert_eq!(err.code(), "invalid_argument", "{s}");
        }
    }
}

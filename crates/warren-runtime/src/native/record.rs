//! The per-sandbox record a restarted node re-adopts from.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::SandboxId;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    pub id: SandboxId,
    pub slot: u32,
    pub init_pid: i32,
    /// The sandbox's network lease and policy (absent: no network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetRecord>,
}

/// What re-adopting a networked sandbox needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetRecord {
    pub lease: u32,
    pub egress: warren_net::EgressPolicy,
}

/// Writes the record atomically (temp file + rename).
pub(crate) fn write(dir: &Path, r: &Record) -> std::io::Result<()> {
    let tmp = dir.join("record.json.tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(r).map_err(std::io::Error::other)?)?;
    drop(f);
    fs::rename(tmp, dir.join("record.json"))
}

/// Reads the record; `None` if missing or unreadable.
pub(crate) fn read(dir: &Path) -> Option<Record> {
    let b = fs::read(dir.join("record.json")).ok()?;
    serde_json::from_slice(&b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let d = tempfile::tempdir().unwrap();
        assert!(read(d.path()).is_none());
        let r = Record {
            id: SandboxId::new("a1").unwrap(),
            slot: 7,
            init_pid: 42,
            net: None,
        };
        write(d.path(), &r).unwrap();
        let back = read(d.path()).unwrap();
        assert_eq!((back.slot, back.init_pid), (7, 42));
        fs::write(d.path().join("record.json"), b"{not json").unwrap();
        assert!(read(d.path()).is_none());
    }
}

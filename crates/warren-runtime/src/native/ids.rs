//! Host id range slots: one per live sandbox, never shared; and the check
//! that the whole span of ranges names no id the host uses.

use std::path::Path;

use crate::RuntimeError;

/// A bitmap allocator of id-range slots.
pub(crate) struct IdAllocator {
    used: Vec<u64>,
    slots: u32,
    next: u32,
}

impl IdAllocator {
    pub(crate) fn new(slots: u32) -> Self {
        IdAllocator {
            used: vec![0; slots.div_ceil(64) as usize],
            slots,
            next: 0,
        }
    }

    fn is_used(&self, s: u32) -> bool {
        self.used[(s / 64) as usize] & (1 << (s % 64)) != 0
    }

    fn set(&mut self, s: u32, v: bool) {
        let w = &mut self.used[(s / 64) as usize];
        if v {
            *w |= 1 << (s % 64);
        } else {
            *w &= !(1 << (s % 64));
        }
    }

    /// Takes a free slot, scanning round-robin so a just-released range is
    /// the last to be reused.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        for i in 0..self.slots {
            let s = (self.next + i) % self.slots;
            if !self.is_used(s) {
                self.set(s, true);
                self.next = (s + 1) % self.slots;
                return Some(s);
            }
        }
        None
    }

    /// Marks a slot used (re-adoption after a restart).
    pub(crate) fn claim(&mut self, s: u32) {
        if s < self.slots {
            self.set(s, true);
        }
    }

    pub(crate) fn release(&mut self, s: u32) {
        if s < self.slots {
            self.set(s, false);
        }
    }
}

/// Refuses an id span `[lo, hi)` that overlaps an id the host's account
/// databases under `etc` name: a uid or gid in `passwd` or `group`, or a
/// subordinate range in `subuid` or `subgid` (another tool's containers).
/// Files that do not exist are skipped.
pub(crate) fn check_host_ids(etc: &Path, lo: u64, hi: u64) -> Result<(), RuntimeError> {
    let overlaps = |start: u64, count: u64| start < hi && start.saturating_add(count) > lo;
    // (file, fields holding single ids, whether lines are `name:start:count`)
    let files: [(&str, &[usize], bool); 4] = [
        ("passwd", &[2, 3], false),
        ("group", &[2], false),
        ("subuid", &[], true),
        ("subgid", &[], true),
    ];
    for (name, id_fields, is_range) in files {
        let path = etc.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(RuntimeError::prepare(&path)(e)),
        };
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(':').collect();
            let conflict = if is_range {
                let start = fields.get(1).and_then(|f| f.trim().parse::<u64>().ok());
                let count = fields.get(2).and_then(|f| f.trim().parse::<u64>().ok());
                match (start, count) {
                    (Some(s), Some(c)) if overlaps(s, c) => Some(s),
                    _ => None,
                }
            } else {
                id_fields
                    .iter()
                    .filter_map(|&i| fields.get(i).and_then(|f| f.trim().parse::<u64>().ok()))
                    .find(|&id| overlaps(id, 1))
            };
            if let Some(id) = conflict {
                return Err(RuntimeError::IdRangeConflict {
                    file: path,
                    entry: fields.first().unwrap_or(&"").to_string(),
                    id,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_inside_the_span_are_refused() {
        let etc = tempfile::tempdir().unwrap();
        let (lo, hi) = (1u64 << 30, 1u64 << 31);
        std::fs::write(
            etc.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(etc.path().join("subuid"), "# comment\nalice:100000:65536\n").unwrap();
        check_host_ids(etc.path(), lo, hi).unwrap();
        // A user inside the span.
        std::fs::write(etc.path().join("group"), "root:x:0:\nodd:x:1073807360:\n").unwrap();
        let e = check_host_ids(etc.path(), lo, hi).unwrap_err();
        assert_eq!(e.code(), "id_range_conflict");
        assert!(e.to_string().contains("odd"), "{e}");
        std::fs::remove_file(etc.path().join("group")).unwrap();
        // A subordinate range straddling the start of the span.
        std::fs::write(etc.path().join("subgid"), "bob:1073741000:65536\n").unwrap();
        let e = check_host_ids(etc.path(), lo, hi).unwrap_err();
        assert!(e.to_string().contains("subgid"), "{e}");
        // Ending exactly at the start does not overlap.
        std::fs::write(etc.path().join("subgid"), "bob:1073676288:65536\n").unwrap();
        check_host_ids(etc.path(), lo, hi).unwrap();
    }

    #[test]
    fn slots_are_unique_until_released() {
        let mut a = IdAllocator::new(130);
        let got: Vec<u32> = (0..130).map(|_| a.allocate().unwrap()).collect();
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 130);
        assert_eq!(a.allocate(), None);
        a.release(77);
        assert_eq!(a.allocate(), Some(77));
        assert_eq!(a.allocate(), None);
    }

    #[test]
    fn claimed_slots_are_skipped() {
        let mut a = IdAllocator::new(4);
        a.claim(0);
        a.claim(2);
        assert_eq!(a.allocate(), Some(1));
        assert_eq!(a.allocate(), Some(3));
        assert_eq!(a.allocate(), None);
    }

    #[test]
    fn released_slot_is_reused_last() {
        let mut a = IdAllocator::new(3);
        let s0 = a.allocate().unwrap();
        a.release(s0);
        assert_ne!(a.allocate(), Some(s0));
    }
}

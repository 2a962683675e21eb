//! The main command's log: a fixed-size ring file that init writes and the
//! node reads, so that output survives restarts of the node and can never
//! grow past its capacity.
//!
//! Layout: a [`HEADER_LEN`]-byte header, then `capacity` data bytes.
//! Header: magic `WRNLOG01` (8 bytes), capacity (u64 LE), total bytes ever
//! written (u64 LE), the rest zero. Byte `n` of the output stream (0-based)
//! lives at data offset `n % capacity`; once `total > capacity` the oldest
//! `total - capacity` bytes have been overwritten.
//!
//! The writer updates the data first and the total after, so a concurrent
//! reader sees at worst a few bytes of the newest write torn; logs tolerate
//! that.

/// Bytes before the data region.
pub const HEADER_LEN: u64 = 64;
const MAGIC: &[u8; 8] = b"WRNLOG01";

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHeader {
    pub capacity: u64,
    pub total: u64,
}

impl LogHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..16].copy_from_slice(&self.capacity.to_le_bytes());
        h[16..24].copy_from_slice(&self.total.to_le_bytes());
        h
    }

    /// Parses a header; `None` if it is not one.
    pub fn decode(b: &[u8]) -> Option<LogHeader> {
        if b.len() < HEADER_LEN as usize || &b[..8] != MAGIC {
            return None;
        }
        let capacity = u64::from_le_bytes(b[8..16].try_into().ok()?);
        let total = u64::from_le_bytes(b[16..24].try_into().ok()?);
        (capacity > 0).then_some(LogHeader { capacity, total })
    }

    /// Where (file offsets) the next `len` bytes go: one or two ranges.
    pub fn write_ranges(&self, len: u64) -> Vec<(u64, u64)> {
        // Only the last `capacity` bytes of a write survive.
        let skip = len.saturating_sub(self.capacity);
        let start = self.total + skip;
        let len = len - skip;
        split(self.capacity, start, len)
    }

    /// The retained bytes, oldest first, as file ranges, plus how many older
    /// bytes were dropped. With `tail`, only the last `tail` bytes.
    pub fn read_ranges(&self, tail: Option<u64>) -> (Vec<(u64, u64)>, u64) {
        let kept = self.total.min(self.capacity);
        let want = tail.map_or(kept, |t| t.min(kept));
        let start = self.total - want;
        (split(self.capacity, start, want), start)
    }
}

/// File ranges `(offset, len)` for stream bytes `[start, start+len)`.
fn split(capacity: u64, start: u64, len: u64) -> Vec<(u64, u64)> {
    if len == 0 {
        return Vec::new();
    }
    let pos = start % capacity;
    let first = len.min(capacity - pos);
    let mut v = vec![(HEADER_LEN + pos, first)];
    if first < len {
        v.push((HEADER_LEN, len - first));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model ring over a Vec, driven only through the range functions.
    struct Ring {
        file: Vec<u8>,
        h: LogHeader,
    }

    impl Ring {
        fn new(cap: u64) -> Self {
            let h = LogHeader {
                capacity: cap,
                total: 0,
            };
            let mut file = h.encode().to_vec();
            file.resize((HEADER_LEN + cap) as usize, 0);
            Ring { file, h }
        }
        fn write(&mut self, data: &[u8]) {
            let skip = data.len().saturating_sub(self.h.capacity as usize);
            let mut src = &data[skip..];
            for (off, len) in self.h.write_ranges(data.len() as u64) {
                let (a, rest) = src.split_at(len as usize);
                self.file[off as usize..(off + len) as usize].copy_from_slice(a);
                src = rest;
            }
            self.h.total += data.len() as u64;
            self.file[..HEADER_LEN as usize].copy_from_slice(&self.h.encode());
        }
        fn read(&self, tail: Option<u64>) -> (Vec<u8>, u64) {
            let h = LogHeader::decode(&self.file).unwrap();
            let (ranges, dropped) = h.read_ranges(tail);
            let mut out = Vec::new();
            for (off, len) in ranges {
                out.extend_from_slice(&self.file[off as usize..(off + len) as usize]);
            }
            (out, dropped)
        }
    }

    #[test]
    fn keeps_the_last_capacity_bytes_in_order() {
        let mut stream = Vec::new();
        let mut r = Ring::new(10);
        for (i, chunk) in ["abc", "defgh", "ijklmnop", "", "q", "rstuvwxyz0123456789"]
            .iter()
            .enumerate()
        {
            r.write(chunk.as_bytes());
            stream.extend_from_slice(chunk.as_bytes());
            let keep = stream.len().min(10);
            let (got, dropped) = r.read(None);
            assert_eq!(got, &stream[stream.len() - keep..], "after write {i}");
            assert_eq!(dropped as usize, stream.len() - keep);
            let (tail, _) = r.read(Some(3));
            assert_eq!(tail, &stream[stream.len() - keep.min(3)..]);
        }
    }

    #[test]
    fn headers_round_trip_and_garbage_is_refused() {
        let h = LogHeader {
            capacity: 1 << 20,
            total: 12345,
        };
        assert_eq!(LogHeader::decode(&h.encode()), Some(h));
        assert_eq!(LogHeader::decode(b"short"), None);
        assert_eq!(LogHeader::decode(&[0u8; 64]), None);
        let mut zero_cap = h.encode();
        zero_cap[8..16].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(LogHeader::decode(&zero_cap), None);
    }
}

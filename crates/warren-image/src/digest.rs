//! SHA-256 digests: hashing readers and writers and digest string helpers.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

/// The algorithm prefix of every digest the store produces.
pub const SHA256_PREFIX: &str = "sha256:";

/// Length of a hex-encoded SHA-256 digest.
pub const SHA256_HEX_LEN: usize = 64;

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `s` is non-empty lowercase hex.
pub fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is a full lowercase hex SHA-256.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == SHA256_HEX_LEN && is_lower_hex(s)
}

/// Parses `"sha256:<64 hex>"` into its hex part.
pub fn parse_sha256_digest(s: &str) -> Option<&str> {
    s.strip_prefix(SHA256_PREFIX).filter(|h| is_sha256_hex(h))
}

/// A writer that hashes and counts everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Returns the inner writer, the hex digest and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts everything read through it, and fails
/// once more than `limit` bytes were read.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
    limit: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
            limit,
        }
    }

    /// Reads the rest of the stream (hashing it), then returns the hex
    /// digest and the byte count.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((hex::encode(self.hasher.finalize()), self.len))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        if self.len > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                LimitExceeded(self.limit),
            ));
        }
        Ok(n)
    }
}

/// The error inside the `io::Error` a [`HashingReader`] returns past its limit.
#[derive(Debug, thiserror::Error)]
#[error("stream is longer than {0} bytes")]
pub struct LimitExceeded(pub u64);

/// Hashes a whole stream, returning the hex digest and the byte count.
pub fn hash_reader(mut reader: impl Read) -> io::Result<(String, u64)> {
    let mut writer = HashingWriter::new(io::sink());
    io::copy(&mut reader, &mut writer)?;
    let (_, hex, len) = writer.finish();
    Ok((hex, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_writer_matches_one_shot_digest() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (inner, hex, len) = w.finish();
        assert_eq!(inner, b"hello world");
        assert_eq!(len, 11);
        assert_eq!(hex, sha256_hex(b"hello world"));
        assert_eq!(hash_reader(&b"hello world"[..]).unwrap(), (hex.clone(), 11));
        assert!(is_sha256_hex(&hex));
        assert_eq!(
            parse_sha256_digest(&format!("sha256:{hex}")),
            Some(hex.as_str())
        );
        assert_eq!(parse_sha256_digest(&hex), None);
        assert!(!is_lower_hex("ABC"));
        assert!(!is_lower_hex(""));
    }
}

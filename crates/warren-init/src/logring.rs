//! Writes the main command's output into the log ring (format in
//! `warren_proto::log`): init reads the main command's stdout/stderr pipe
//! and copies it into a fixed-size file in the node's state directory.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use warren_proto::log::LogHeader;

pub struct LogRing {
    file: std::fs::File,
    header: LogHeader,
    /// Read end of the pipe the main command writes to.
    pub pipe: Option<OwnedFd>,
    buf: Vec<u8>,
}

impl LogRing {
    /// Opens the ring the node prepared (header already written).
    pub fn open(file: OwnedFd, pipe: OwnedFd) -> std::io::Result<LogRing> {
        let file = std::fs::File::from(file);
        let mut h = [0u8; warren_proto::log::HEADER_LEN as usize];
        file.read_exact_at(&mut h, 0)?;
        let header = LogHeader::decode(&h).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not a log ring")
        })?;
        Ok(LogRing {
            file,
            header,
            pipe: Some(pipe),
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// Copies what the pipe has now into the ring. Returns false once the
    /// pipe is closed (every writer is gone).
    pub fn pump(&mut self) -> bool {
        let Some(pipe) = self.pipe.take() else {
            return false;
        };
        let open = self.drain(&pipe);
        if open {
            self.pipe = Some(pipe);
        }
        open
    }

    fn drain(&mut self, pipe: &OwnedFd) -> bool {
        loop {
            match nix::unistd::read(pipe.as_fd(), &mut self.buf) {
                Ok(0) => return false,
                Ok(n) => self.append(n),
                Err(nix::errno::Errno::EINTR) => continue,
                // Drained for now (the pipe is non-blocking).
                Err(_) => return true,
            }
        }
    }

    fn append(&mut self, n: usize) {
        let data = &self.buf[..n];
        let skip = n.saturating_sub(self.header.capacity as usize);
        let mut src = &data[skip..];
        for (off, len) in self.header.write_ranges(n as u64) {
            let (chunk, rest) = src.split_at(len as usize);
            // A failed write (disk full) loses output, never the sandbox.
            let _ = self.file.write_all_at(chunk, off);
            src = rest;
        }
        self.header.total += n as u64;
        let _ = self.file.write_all_at(&self.header.encode(), 0);
    }
}

//! The file agent: init's own executable started inside a sandbox, as the
//! sandbox's user, serving file operations over its stdin and stdout (the
//! protocol is `warren_proto::agent`).
//!
//! Because it runs inside the sandbox, every path it touches is resolved in
//! the sandbox's mount namespace with the sandbox user's permissions, under
//! the sandbox's seccomp policy, capabilities and cgroup: the host never
//! touches a sandbox path. On top of that, every path is resolved with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` against a descriptor
//! of `/` (so `/proc/self/root`-style magic links are refused and `..` or
//! absolute symlinks never leave the root), and operations on a final
//! component use `*at` calls on the resolved parent with no-follow flags.
//! Paths are never resolved by string manipulation; the only lexical step
//! is splitting off the last component (see [`path::split`]).
//!
//! The agent trusts nothing it reads either: frames are size-checked and
//! malformed input ends the agent.

mod ops;
mod path;
mod watch;

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use warren_proto::agent::{
    self, encode_message, parse_header, AgentReply, AgentRequest, FrameKind, FsErrorCode,
    AGENT_PROTOCOL_VERSION, FRAME_HEADER_BYTES, MAX_CHUNK_BYTES,
};

/// A failed operation: the stable code and a message for the caller.
#[derive(Debug)]
pub(crate) struct Fail {
    pub code: FsErrorCode,
    pub message: String,
}

impl Fail {
    pub fn new(code: FsErrorCode, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }

    /// From an errno, with what was being done.
    pub fn errno(e: nix::errno::Errno, what: &str) -> Fail {
        Fail::new(
            FsErrorCode::from_errno(e as i32),
            format!("{what}: {}", e.desc()),
        )
    }

    fn reply(self) -> AgentReply {
        AgentReply::Error {
            code: self.code,
            message: self.message,
        }
    }
}

/// Why the conversation with the node ended.
#[derive(Debug)]
pub(crate) enum End {
    /// stdin closed at a frame boundary: a normal end.
    Eof,
    /// Broken pipe, malformed frame, or an unexpected message.
    Broken,
}

/// One frame read from the node.
pub(crate) enum Frame {
    Request(AgentRequest),
    /// Data is in the caller's buffer, this many bytes.
    Data(usize),
}

/// The agent's end of the conversation.
pub(crate) struct Io {
    input: BufReader<File>,
    output: File,
    /// Message bodies land here.
    msg: Vec<u8>,
}

impl Io {
    /// Reads the next frame; data goes into `data` (at least
    /// `MAX_CHUNK_BYTES` long).
    pub fn read_frame(&mut self, data: &mut [u8]) -> Result<Frame, End> {
        let mut h = [0u8; FRAME_HEADER_BYTES];
        match self.input.read(&mut h[..1]) {
            Ok(0) => return Err(End::Eof),
            Ok(_) => {}
            Err(_) => return Err(End::Broken),
        }
        self.input
            .read_exact(&mut h[1..])
            .map_err(|_| End::Broken)?;
        let (kind, len) = parse_header(h).map_err(|_| End::Broken)?;
        match kind {
            FrameKind::Data => {
                self.input
                    .read_exact(&mut data[..len])
                    .map_err(|_| End::Broken)?;
                Ok(Frame::Data(len))
            }
            FrameKind::Message => {
                self.msg.resize(len, 0);
                self.input
                    .read_exact(&mut self.msg)
                    .map_err(|_| End::Broken)?;
                let req = agent::decode_message(&self.msg).map_err(|_| End::Broken)?;
                Ok(Frame::Request(req))
            }
        }
    }

    pub fn send(&mut self, msg: &AgentReply) -> Result<(), End> {
        let bytes = encode_message(msg).map_err(|_| End::Broken)?;
        self.output.write_all(&bytes).map_err(|_| End::Broken)
    }

    pub fn fail(&mut self, f: Fail) -> Result<(), End> {
        self.send(&f.reply())
    }

    /// Sends `buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + n]` as a data
    /// frame; the header is written into the front of `buf`.
    pub fn send_data(&mut self, buf: &mut [u8], n: usize) -> Result<(), End> {
        buf[..FRAME_HEADER_BYTES].copy_from_slice(&agent::frame_header(FrameKind::Data, n));
        self.output
            .write_all(&buf[..FRAME_HEADER_BYTES + n])
            .map_err(|_| End::Broken)
    }

    pub fn stdin_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.input.get_ref().as_fd()
    }
}

/// Runs the agent; returns the process exit code.
pub fn main() -> i32 {
    // A fork of init: name it, so `ps` in the sandbox tells it apart.
    let _ = nix::sys::prctl::set_name(c"warren-fs-agent");
    // Modes are applied exactly as asked.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map(File::from);
    let (input, output) = match (
        dup(std::io::stdin().as_fd()),
        dup(std::io::stdout().as_fd()),
    ) {
        (Ok(i), Ok(o)) => (i, o),
        _ => return 2,
    };
    let mut io = Io {
        input: BufReader::with_capacity(64 * 1024, input),
        output,
        msg: Vec::new(),
    };
    let root: OwnedFd = match nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(_) => return 2,
    };
    if io
        .send(&AgentReply::Ready {
            version: AGENT_PROTOCOL_VERSION,
        })
        .is_err()
    {
        return 2;
    }
    let mut agent = ops::Agent {
        root,
        buf: vec![0u8; FRAME_HEADER_BYTES + MAX_CHUNK_BYTES],
        tmp_counter: 0,
    };
    match agent.serve(&mut io) {
        End::Eof => 0,
        End::Broken => 3,
    }
}

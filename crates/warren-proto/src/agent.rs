//! The file-agent protocol: messages between the node and the file agent,
//! a process that runs *inside* a sandbox, as the sandbox's user, and
//! performs file operations there (see `docs/files.md`).
//!
//! ## Transport (version [`AGENT_PROTOCOL_VERSION`])
//! The agent's stdin (node → agent) and stdout (agent → node), both pipes.
//! Each direction is a sequence of frames: a 5-byte header (`u32`
//! little-endian body length, then one [`FrameKind`] byte) and the body.
//! A [`FrameKind::Message`] body is one JSON document (at most
//! [`MAX_MESSAGE_BYTES`]); a [`FrameKind::Data`] body is raw file bytes (at
//! most [`MAX_CHUNK_BYTES`]). Paths are raw bytes (JSON arrays of numbers),
//! so names that are not UTF-8 round-trip.
//!
//! ## Conversation
//! The agent first sends [`AgentReply::Ready`]. Then, strictly one request
//! at a time:
//! - `stat` → `stat` | `error`
//! - `list` → `entries`* then `list_end` | `error`
//! - `read` → `read_start`, data frames, then `done` (or `error` mid-way) |
//!   `error`
//! - `write` → `write_accepted` | `error`; after `write_accepted` the node
//!   sends data frames then `write_end`, and the agent answers `done` or
//!   `error`. A failure while data is still coming (e.g. `no_space`) is
//!   answered at once; the agent then discards data frames up to
//!   `write_end`, so there is exactly one final answer.
//! - `mkdir`, `remove`, `rename` → `done` | `error`
//! - `watch` → `watching` | `error`, then `events`* until the agent's stdin
//!   closes; `done` when the watched path itself went away.
//!
//! Invariants: the agent is sandbox code and may be tampered with by tenant
//! processes of the same uid, so the node validates every frame against the
//! caps here and never uses a size or path the agent reports for anything
//! on the host. Unknown fields are refused.

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to the messages below.
pub const AGENT_PROTOCOL_VERSION: u32 = 1;

/// argv[0] that tells a multi-call binary to run as the file agent.
pub const AGENT_ARGV0: &str = "warren-fs-agent";

/// Environment entry that marks an agent process (`NAME=protocol version`).
pub const AGENT_ENV_MARKER: &str = "WARREN_FS_AGENT_PROTOCOL";

/// Bytes of a frame header: body length (`u32` LE) and kind.
pub const FRAME_HEADER_BYTES: usize = 5;

/// Largest JSON message body.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Largest data frame body (file contents travel in chunks of this size).
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;

/// Longest path accepted in a request (the kernel's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// Entries returned by `list` when the caller gives no limit.
pub const DEFAULT_LIST_LIMIT: u32 = 10_000;

/// Most entries a single `list` may return.
pub const MAX_LIST_LIMIT: u32 = 100_000;

/// Most events in one `events` message.
pub const MAX_EVENTS_PER_MESSAGE: usize = 32;

/// The kind of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A JSON [`AgentRequest`] or [`AgentReply`].
    Message = 1,
    /// Raw file bytes.
    Data = 2,
}

/// A frame header that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("{kind:?} frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        kind: FrameKind,
        len: usize,
        max: usize,
    },
}

/// Builds a frame header.
pub fn frame_header(kind: FrameKind, len: usize) -> [u8; FRAME_HEADER_BYTES] {
    let l = (len as u32).to_le_bytes();
    [l[0], l[1], l[2], l[3], kind as u8]
}

/// Parses and checks a frame header: returns the kind and body length.
pub fn parse_header(h: [u8; FRAME_HEADER_BYTES]) -> Result<(FrameKind, usize), FrameError> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let (kind, max) = match h[4] {
        1 => (FrameKind::Message, MAX_MESSAGE_BYTES),
        2 => (FrameKind::Data, MAX_CHUNK_BYTES),
        k => return Err(FrameError::Kind(k)),
    };
    if len > max {
        return Err(FrameError::TooLarge { kind, len, max });
    }
    Ok((kind, len))
}

/// Encodes a message as a complete frame (header included).
pub fn encode_message<T: Serialize>(msg: &T) -> Result<Vec<u8>, crate::ProtoError> {
    let mut v = vec![0u8; FRAME_HEADER_BYTES];
    serde_json::to_writer(&mut v, msg).map_err(crate::ProtoError::Encode)?;
    let len = v.len() - FRAME_HEADER_BYTES;
    if len > MAX_MESSAGE_BYTES {
        return Err(crate::ProtoError::TooLarge {
            len,
            max: MAX_MESSAGE_BYTES,
        });
    }
    v[..FRAME_HEADER_BYTES].copy_from_slice(&frame_header(FrameKind::Message, len));
    Ok(v)
}

/// Decodes a message body.
pub fn decode_message<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, crate::ProtoError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(crate::ProtoError::TooLarge {
            len: body.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    serde_json::from_slice(body).map_err(crate::ProtoError::Decode)
}

/// Node → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentRequest {
    /// Facts about `path` itself (a final symlink is not followed).
    Stat {
        path: Vec<u8>,
    },
    /// The entries of a directory (a final symlink is followed, inside the
    /// sandbox); recursive listings never follow symlinks.
    List {
        path: Vec<u8>,
        recursive: bool,
        limit: u32,
    },
    /// A regular file's bytes from `offset`, at most `length` of them.
    Read {
        path: Vec<u8>,
        offset: u64,
        length: Option<u64>,
    },
    /// Replace `path` atomically with the data frames that follow. `mode`
    /// defaults to the replaced file's permissions, else `0o644`.
    Write {
        path: Vec<u8>,
        mode: Option<u32>,
        create_parents: bool,
    },
    /// Ends the data of a `write`.
    WriteEnd {},
    Mkdir {
        path: Vec<u8>,
        parents: bool,
        mode: Option<u32>,
    },
    Remove {
        path: Vec<u8>,
        recursive: bool,
    },
    /// `rename(2)`; with `overwrite: false` an existing `to` is an error.
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
        overwrite: bool,
    },
    Watch {
        path: Vec<u8>,
        recursive: bool,
    },
}

/// Agent → node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentReply {
    /// First frame of every agent.
    Ready {
        version: u32,
    },
    Stat {
        entry: FsEntry,
    },
    Entries {
        entries: Vec<FsEntry>,
    },
    ListEnd {
        truncated: bool,
    },
    /// The file's size when it was opened (informational only).
    ReadStart {
        size: u64,
    },
    WriteAccepted {},
    Watching {},
    Events {
        events: Vec<WatchEvent>,
    },
    /// Success; `bytes` read or written where that applies.
    Done {
        bytes: u64,
    },
    Error {
        code: FsErrorCode,
        message: String,
    },
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// From `st_mode`.
    pub fn from_mode(mode: u32) -> FileKind {
        match mode & 0o170000 {
            0o040000 => FileKind::Directory,
            0o120000 => FileKind::Symlink,
            0o010000 => FileKind::Fifo,
            0o140000 => FileKind::Socket,
            0o020000 => FileKind::CharDevice,
            0o060000 => FileKind::BlockDevice,
            _ => FileKind::File,
        }
    }
}

/// One file, as `stat` and `list` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsEntry {
    /// Absolute path inside the sandbox (raw bytes).
    pub path: Vec<u8>,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner as the sandbox sees it.
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds and nanoseconds since the epoch.
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    /// Where a symlink points (raw bytes, not resolved).
    #[serde(default)]
    pub symlink_target: Option<Vec<u8>>,
}

/// What happened to a watched path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchEventKind {
    Created,
    Modified,
    /// Permissions, ownership or timestamps changed.
    Attributes,
    Deleted,
    /// Renamed away from `path` (paired with `moved_to` by `cookie`).
    MovedFrom,
    MovedTo,
    /// Events were lost because the consumer fell behind; rescan.
    Overflow,
}

/// One change under a watched path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchEvent {
    pub kind: WatchEventKind,
    /// Absolute path inside the sandbox (empty for `overflow`).
    pub path: Vec<u8>,
    pub is_dir: bool,
    /// Pairs `moved_from` with `moved_to` (0 otherwise).
    #[serde(default)]
    pub cookie: u32,
}

/// Stable error codes of file operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsErrorCode {
    NotFound,
    PermissionDenied,
    NotADirectory,
    IsADirectory,
    AlreadyExists,
    DirectoryNotEmpty,
    NoSpace,
    ReadOnly,
    NameTooLong,
    SymlinkLoop,
    /// Empty, not absolute, containing NUL, too long, or naming `/` (or
    /// `.`/`..`) where an operation needs a final component.
    InvalidPath,
    CrossDevice,
    /// A mount point or a file in use.
    Busy,
    /// Not a regular file where one is needed (devices, FIFOs, sockets).
    NotAFile,
    /// A limit of the file API (watches per sandbox, directory depth).
    LimitExceeded,
    /// The request itself was malformed.
    InvalidRequest,
    IoError,
}

impl FsErrorCode {
    /// The stable string form.
    pub fn as_str(self) -> &'static str {
        match self {
            FsErrorCode::NotFound => "not_found",
            FsErrorCode::PermissionDenied => "permission_denied",
            FsErrorCode::NotADirectory => "not_a_directory",
            FsErrorCode::IsADirectory => "is_a_directory",
            FsErrorCode::AlreadyExists => "already_exists",
            FsErrorCode::DirectoryNotEmpty => "directory_not_empty",
            FsErrorCode::NoSpace => "no_space",
            FsErrorCode::ReadOnly => "read_only",
            FsErrorCode::NameTooLong => "name_too_long",
            FsErrorCode::SymlinkLoop => "symlink_loop",
            FsErrorCode::InvalidPath => "invalid_path",
            FsErrorCode::CrossDevice => "cross_device",
            FsErrorCode::Busy => "busy",
            FsErrorCode::NotAFile => "not_a_file",
            FsErrorCode::LimitExceeded => "limit_exceeded",
            FsErrorCode::InvalidRequest => "invalid_request",
            FsErrorCode::IoError => "io_error",
        }
    }

    /// The code for an errno value.
    pub fn from_errno(errno: i32) -> FsErrorCode {
        match errno {
            libc_errno::ENOENT => FsErrorCode::NotFound,
            libc_errno::EACCES | libc_errno::EPERM => FsErrorCode::PermissionDenied,
            libc_errno::ENOTDIR => FsErrorCode::NotADirectory,
            libc_errno::EISDIR => FsErrorCode::IsADirectory,
            libc_errno::EEXIST => FsErrorCode::AlreadyExists,
            libc_errno::ENOTEMPTY => FsErrorCode::DirectoryNotEmpty,
            libc_errno::ENOSPC | libc_errno::EDQUOT | libc_errno::EFBIG => FsErrorCode::NoSpace,
            libc_errno::EROFS => FsErrorCode::ReadOnly,
            libc_errno::ENAMETOOLONG => FsErrorCode::NameTooLong,
            libc_errno::ELOOP => FsErrorCode::SymlinkLoop,
            libc_errno::EXDEV => FsErrorCode::CrossDevice,
            libc_errno::EINVAL => FsErrorCode::InvalidPath,
            libc_errno::EBUSY => FsErrorCode::Busy,
            _ => FsErrorCode::IoError,
        }
    }
}

impl std::fmt::Display for FsErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Linux errno values (this crate does no I/O and takes no libc).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EACCES: i32 = 13;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EXDEV: i32 = 18;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOTEMPTY: i32 = 39;
    pub const ELOOP: i32 = 40;
    pub const EDQUOT: i32 = 122;
}

/// Checks a request path: non-empty, absolute, no NUL, at most
/// [`MAX_PATH_BYTES`].
pub fn check_path(path: &[u8]) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("path is empty");
    }
    if path[0] != b'/' {
        return Err("path is not absolute");
    }
    if path.contains(&0) {
        return Err("path contains a NUL byte");
    }
    if path.len() > MAX_PATH_BYTES {
        return Err("path is longer than 4096 bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_are_capped() {
        let req = AgentRequest::Write {
            path: b"/tmp/\xff\xfe".to_vec(),
            mode: Some(0o600),
            create_parents: true,
        };
        let f = encode_message(&req).unwrap();
        let mut h = [0u8; FRAME_HEADER_BYTES];
        h.copy_from_slice(&f[..FRAME_HEADER_BYTES]);
        let (kind, len) = parse_header(h).unwrap();
        assert_eq!(kind, FrameKind::Message);
        assert_eq!(len, f.len() - FRAME_HEADER_BYTES);
        let back: AgentRequest = decode_message(&f[FRAME_HEADER_BYTES..]).unwrap();
        assert_eq!(back, req);

        assert!(parse_header(frame_header(FrameKind::Data, MAX_CHUNK_BYTES)).is_ok());
        assert!(parse_header(frame_header(FrameKind::Data, MAX_CHUNK_BYTES + 1)).is_err());
        assert!(parse_header(frame_header(FrameKind::Message, MAX_MESSAGE_BYTES + 1)).is_err());
        assert_eq!(parse_header([0, 0, 0, 0, 9]), Err(FrameError::Kind(9)));
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(decode_message::<AgentRequest>(br#"{"type":"stat","path":[47],"x":1}"#).is_err());
        assert!(decode_message::<AgentReply>(br#"{"type":"format"}"#).is_err());
        let e: AgentReply =
            decode_message(br#"{"type":"error","code":"no_space","message":"full"}"#).unwrap();
        assert_eq!(
            e,
            AgentReply::Error {
                code: FsErrorCode::NoSpace,
                message: "full".into()
            }
        );
    }

    #[test]
    fn error_codes_are_stable() {
        for (errno, code) in [
            (2, "not_found"),
            (13, "permission_denied"),
            (20, "not_a_directory"),
            (21, "is_a_directory"),
            (17, "already_exists"),
            (39, "directory_not_empty"),
            (28, "no_space"),
            (30, "read_only"),
            (36, "name_too_long"),
            (40, "symlink_loop"),
            (18, "cross_device"),
            (5, "io_error"),
        ] {
            let c = FsErrorCode::from_errno(errno);
            assert_eq!(c.as_str(), code);
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{code}\""));
        }
    }

    #[test]
    fn paths_are_checked() {
        assert!(check_path(b"/a/\xff").is_ok());
        for bad in [&b""[..], b"a/b", b"/a\0b"] {
            assert!(check_path(bad).is_err());
        }
        assert!(check_path(&[b'/'; MAX_PATH_BYTES + 1]).is_err());
    }
}

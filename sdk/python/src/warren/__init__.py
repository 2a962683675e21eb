"""Warren's Python SDK: sandboxes, execs, files, tunnels, snapshots and
images on a Warren server.

``warren.Sandbox``, ``warren.Image``, ... block; ``warren.aio`` has the
same classes as coroutines. Configure with ``WARREN_URL`` and
``WARREN_TOKEN``, or pass ``client=warren.Client(url=..., token=...)``.
"""

from . import aio
from ._client import DEFAULT_URL, Client
from ._errors import (
    AuthError,
    BuildError,
    CapacityExhausted,
    CommandError,
    Conflict,
    DirectoryNotEmpty,
    ExecTimeout,
    FileExists,
    FileNotFound,
    FilesystemError,
    ImageError,
    ImageInUse,
    ImageNotFound,
    InternalError,
    InvalidArgument,
    IsADirectory,
    MemorySnapshotNotFound,
    NameConflict,
    NetworkError,
    NoSpace,
    NotADirectory,
    NotCheckpointable,
    NotFound,
    NotReady,
    PermissionDenied,
    RegistryError,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxPaused,
    SandboxTerminated,
    SnapshotCorrupt,
    SnapshotFailed,
    SnapshotUnavailable,
    WarrenConnectionError,
    WarrenError,
)
from ._sync import SyncIterator, synchronize
from ._types import (
    ArchiveResult,
    BackgroundExecInfo,
    ConnectToken,
    ConnectTokenInfo,
    Endpoint,
    ExecResult,
    FileEvent,
    FileInfo,
    GcReport,
    ImageInfo,
    MemorySnapshotInfo,
    NetworkInfo,
    PushResult,
    SandboxInfo,
    SandboxState,
    SnapshotInfo,
    Termination,
    TerminationReason,
    Tunnel,
    Tunnels,
)

# The blocking twins of the async classes (see _sync.py). Order matters
# only in that every class a method can return is registered.
StreamReader = synchronize(aio.StreamReader)
StdinWriter = synchronize(aio.StdinWriter)
Process = synchronize(aio.Process)
FileWatcher = synchronize(aio.FileWatcher)
Filesystem = synchronize(aio.Filesystem)
Image = synchronize(aio.Image)
MemorySnapshot = synchronize(aio.MemorySnapshot)
BackgroundExec = synchronize(aio.BackgroundExec)
Sandbox = synchronize(aio.Sandbox)
Workspace = synchronize(aio.Workspace)
Token = synchronize(aio.Token)

__all__ = [
    "DEFAULT_URL",
    "ArchiveResult",
    "AuthError",
    "BackgroundExec",
    "BackgroundExecInfo",
    "BuildError",
    "CapacityExhausted",
    "Client",
    "CommandError",
    "Conflict",
    "ConnectToken",
    "ConnectTokenInfo",
    "DirectoryNotEmpty",
    "Endpoint",
    "ExecResult",
    "ExecTimeout",
    "FileEvent",
    "FileExists",
    "FileInfo",
    "FileNotFound",
    "FileWatcher",
    "Filesystem",
    "FilesystemError",
    "GcReport",
    "Image",
    "ImageError",
    "ImageInUse",
    "ImageInfo",
    "ImageNotFound",
    "InternalError",
    "InvalidArgument",
    "IsADirectory",
    "MemorySnapshot",
    "MemorySnapshotInfo",
    "MemorySnapshotNotFound",
    "NameConflict",
    "NetworkError",
    "NetworkInfo",
    "NoSpace",
    "NotADirectory",
    "NotCheckpointable",
    "NotFound",
    "NotReady",
    "PermissionDenied",
    "Process",
    "PushResult",
    "RegistryError",
    "Sandbox",
    "SandboxInfo",
    "SandboxNotFound",
    "SandboxNotRunning",
    "SandboxPaused",
    "SandboxState",
    "SandboxTerminated",
    "SnapshotCorrupt",
    "SnapshotFailed",
    "SnapshotInfo",
    "SnapshotUnavailable",
    "StdinWriter",
    "StreamReader",
    "SyncIterator",
    "Termination",
    "TerminationReason",
    "Token",
    "Tunnel",
    "Tunnels",
    "WarrenConnectionError",
    "WarrenError",
    "Workspace",
    "aio",
]

"""Typed exceptions for the server's stable error codes (docs/api.md).

Every failure the SDK raises is a :class:`WarrenError` carrying the
server's ``code``, its ``message`` and the HTTP ``status`` (``None`` when
no HTTP answer was involved). Codes without a dedicated class still give a
:class:`WarrenError` with that code, so new server codes never break
callers that match on ``err.code``.
"""

from __future__ import annotations

import json
from typing import Any


class WarrenError(Exception):
    """Base of every SDK error: ``code`` is the server's stable error code."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(code, message, status)
        self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status else ""
        return f"{self.code}: {self.message}{status}"


class WarrenConnectionError(WarrenError, ConnectionError):
    """The server could not be reached, or the connection broke mid-call."""


class AuthError(WarrenError):
    """``unauthenticated`` (401) or ``forbidden`` (403)."""


class InvalidArgument(WarrenError):
    """A request the server refused as malformed (``invalid_argument``,
    ``invalid_json``, ``invalid_image_reference``, ``invalid_recipe``, ...)."""


class NotFound(WarrenError):
    """Something does not exist (``not_found`` and the specific kinds below)."""


class SandboxNotFound(NotFound):
    """No such sandbox in this workspace."""


class ImageNotFound(NotFound):
    """No such image in the node's store (nor pullable)."""


class Conflict(WarrenError):
    """The request conflicts with the current state (HTTP 409)."""


class NameConflict(Conflict):
    """The sandbox name is taken by a live sandbox of this workspace."""


class SandboxTerminated(Conflict):
    """The sandbox has ended."""


class SandboxNotRunning(Conflict):
    """The sandbox is not running (yet)."""


class ImageInUse(Conflict):
    """The image is used (or mounted) by a live sandbox."""


class CommandError(InvalidArgument):
    """An exec's program or working directory is missing or not executable
    (``exec_not_found``, ``exec_permission_denied``, ``workdir_not_found``)."""


class ExecTimeout(WarrenError):
    """An exec ran past its ``timeout`` and was killed by the server."""


class CapacityExhausted(WarrenError):
    """The node has no room for another sandbox."""


class NotReady(WarrenError):
    """``wait_ready`` timed out before the readiness probe passed."""


class NetworkError(WarrenError):
    """Ports, tunnels and egress (``port_not_exposed``,
    ``network_unavailable``, ``relay_unavailable``)."""


class SnapshotFailed(WarrenError):
    """Taking a snapshot failed (the sandbox keeps running)."""


class SandboxPaused(Conflict):
    """The sandbox is paused and was created without ``auto_resume``:
    :meth:`~warren.Sandbox.resume` it first."""


class NotCheckpointable(Conflict):
    """The sandbox was not created with ``memory_snapshots=True`` (or
    ``auto_resume``, or ``on_idle="pause"``), so it cannot be
    checkpointed, forked or paused."""


class MemorySnapshotNotFound(NotFound):
    """No such memory snapshot in this workspace."""


class SnapshotCorrupt(SnapshotFailed):
    """The memory snapshot is damaged; nothing was restored."""


class SnapshotUnavailable(SnapshotFailed):
    """The node cannot take or restore memory snapshots (no CRIU 4.x, or
    not for this sandbox)."""


class ImageError(WarrenError):
    """An image could not be pulled, imported, exported or pushed."""


class RegistryError(ImageError):
    """The registry refused or could not be reached (``registry_auth``,
    ``registry_unavailable``, ``registry_insecure_not_allowed``, ``push_failed``)."""


class BuildError(ImageError):
    """An image build failed; ``step``, ``line`` and ``exit_code`` say where."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        *,
        step: int | None = None,
        line: int | None = None,
        exit_code: int | None = None,
    ) -> None:
        super().__init__(code, message, status)
        self.step = step
        self.line = line
        self.exit_code = exit_code


class FilesystemError(WarrenError):
    """A file operation inside the sandbox failed."""


class FileNotFound(FilesystemError, NotFound):
    """No such file or directory in the sandbox."""


class FileExists(FilesystemError, Conflict):
    """The target exists."""


class PermissionDenied(FilesystemError):
    """The sandbox's user may not do this to that file."""


class IsADirectory(FilesystemError):
    """A directory where a file is needed."""


class NotADirectory(FilesystemError):
    """A path component (or the target) is not a directory."""


class DirectoryNotEmpty(FilesystemError, Conflict):
    """Removing a non-empty directory without ``recursive``."""


class NoSpace(FilesystemError):
    """The sandbox's disk (``disk``) or the node's is full."""


class InternalError(WarrenError):
    """Warren failed; details are in the server log."""


_BY_CODE: dict[str, type[WarrenError]] = {
    "unauthenticated": AuthError,
    "forbidden": AuthError,
    "invalid_argument": InvalidArgument,
    "invalid_json": InvalidArgument,
    "invalid_image_reference": InvalidArgument,
    "invalid_recipe": InvalidArgument,
    "invalid_context": InvalidArgument,
    "context_too_large": InvalidArgument,
    "exec_not_found": CommandError,
    "exec_permission_denied": CommandError,
    "workdir_not_found": CommandError,
    "not_found": NotFound,
    "sandbox_not_found": SandboxNotFound,
    "image_not_found": ImageNotFound,
    "name_conflict": NameConflict,
    "sandbox_terminated": SandboxTerminated,
    "sandbox_not_running": SandboxNotRunning,
    "image_in_use": ImageInUse,
    "capacity_exhausted": CapacityExhausted,
    "exec_timeout": ExecTimeout,
    "not_ready": NotReady,
    "port_not_exposed": NetworkError,
    "network_unavailable": NetworkError,
    "relay_unavailable": NetworkError,
    "snapshot_failed": SnapshotFailed,
    "snapshot_corrupt": SnapshotCorrupt,
    "snapshot_unavailable": SnapshotUnavailable,
    "sandbox_paused": SandboxPaused,
    "sandbox_not_checkpointable": NotCheckpointable,
    "memory_snapshot_not_found": MemorySnapshotNotFound,
    "registry_auth": RegistryError,
    "registry_unavailable": RegistryError,
    "registry_insecure_not_allowed": RegistryError,
    "push_failed": RegistryError,
    "digest_mismatch": ImageError,
    "no_matching_platform": ImageError,
    "invalid_image": ImageError,
    "image_not_exportable": ImageError,
    "build_step_failed": BuildError,
    "build_step_timeout": BuildError,
    "invalid_copy_source": BuildError,
    "invalid_user": BuildError,
    "file_not_found": FileNotFound,
    "file_exists": FileExists,
    "permission_denied": PermissionDenied,
    "is_a_directory": IsADirectory,
    "not_a_directory": NotADirectory,
    "directory_not_empty": DirectoryNotEmpty,
    "no_space": NoSpace,
    "invalid_path": FilesystemError,
    "not_a_file": FilesystemError,
    "read_only_filesystem": FilesystemError,
    "name_too_long": FilesystemError,
    "symlink_loop": FilesystemError,
    "cross_device": FilesystemError,
    "file_busy": FilesystemError,
    "limit_exceeded": FilesystemError,
    "file_io_error": FilesystemError,
    "internal": InternalError,
}


def error_for(code: str, message: str, status: int | None = None) -> WarrenError:
    """The typed exception for a server error code (``WarrenError`` if unknown)."""
    return _BY_CODE.get(code, WarrenError)(code, message, status)


def error_from_body(status: int, body: bytes) -> WarrenError:
    """Decodes an ``{"error": {"code", "message"}}`` answer; anything else
    becomes ``http_<status>`` with the start of the body as message."""
    detail = _error_detail(body)
    if detail is None:
        text = body[:500].decode("utf-8", "replace").strip() or "no body"
        return error_for(f"http_{status}", text, status)
    return error_for(detail[0], detail[1], status)


def _error_detail(body: bytes) -> tuple[str, str] | None:
    try:
        err: Any = json.loads(body)["error"]
        return str(err["code"]), str(err.get("message", ""))
    except (ValueError, KeyError, TypeError):
        return None


def is_api_error(body: bytes) -> bool:
    """Whether ``body`` is Warren's own error envelope (not a proxy's page)."""
    return _error_detail(body) is not None

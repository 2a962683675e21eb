"""Plain data the API returns, as frozen dataclasses.

Each type is built from the server's JSON with :func:`parse`, which keeps
the known fields and ignores new ones, so a newer server does not break an
older SDK. The full JSON stays available as ``raw``.
"""

from __future__ import annotations

import dataclasses
import enum
import ssl
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def parse(cls: type[T], data: dict[str, Any]) -> T:
    """Builds dataclass ``cls`` from ``data``: known fields only, plus ``raw``."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: v for k, v in data.items() if k in names}
    if "raw" in names:
        kwargs["raw"] = data
    return cls(**kwargs)


class SandboxState(enum.StrEnum):
    """Where a sandbox is in its life."""

    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


class TerminationReason(enum.StrEnum):
    """Why a sandbox ended."""

    EXITED = "exited"
    TIMEOUT = "timeout"
    IDLE_TIMEOUT = "idle_timeout"
    OOM_KILLED = "oom_killed"
    TERMINATED = "terminated"
    NODE_RESTART = "node_restart"
    ERROR = "error"
    UNKNOWN = "unknown"

    @classmethod
    def _missing_(cls, value: object) -> TerminationReason:
        return cls.UNKNOWN


@dataclass(frozen=True)
class Termination:
    """How a sandbox ended: ``reason``, the shell-style ``exit_code`` (exit
    code, or 128 + signal) and a ``detail`` message."""

    reason: TerminationReason
    exit_code: int | None = None
    detail: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Termination:
        return cls(
            reason=TerminationReason(str(data.get("reason"))),
            exit_code=data.get("exit_code"),
            detail=data.get("detail"),
        )


@dataclass(frozen=True)
class NetworkInfo:
    """A sandbox's network policy and address."""

    block_network: bool = False
    outbound_cidr_allowlist: list[str] | None = None
    address: str | None = None


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the API shows it (``GET /v1/sandboxes/{id}``)."""

    id: str
    state: SandboxState
    image: str = ""
    name: str | None = None
    command: list[str] | None = None
    workdir: str = "/"
    tags: dict[str, str] = field(default_factory=dict)
    timeout_secs: int = 0
    idle_timeout_secs: int | None = None
    cpu: float | None = None
    memory_mib: int | None = None
    disk_mib: int | None = None
    created_at: str = ""
    started_at: str | None = None
    ended_at: str | None = None
    termination: Termination | None = None
    network: NetworkInfo = field(default_factory=NetworkInfo)
    encrypted_ports: list[Any] = field(default_factory=list)
    h2_ports: list[Any] = field(default_factory=list)
    unencrypted_ports: list[int] = field(default_factory=list)
    readiness_probe: dict[str, Any] | None = None
    ready: bool = False
    mounts: list[dict[str, str]] = field(default_factory=list)
    memory_snapshots: bool = False
    auto_resume: bool = False
    on_idle: str = "terminate"
    paused_at: str | None = None
    from_memory_snapshot: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxInfo:
        term = data.get("termination")
        return dataclasses.replace(
            parse(cls, data),
            state=SandboxState(data["state"]),
            termination=Termination.from_json(term) if term else None,
            network=parse(NetworkInfo, data.get("network") or {}),
        )


@dataclass(frozen=True)
class Endpoint:
    """A host and port of the relay."""

    host: str
    port: int

    def dial_address(self) -> tuple[str, int]:
        """Where to connect: ``127.0.0.1`` for a ``*.localhost`` host (RFC
        6761 names loopback; browsers and curl know it, Python's resolver
        does not), else the host itself. Keep :attr:`host` for TLS SNI and
        the HTTP ``Host`` header."""
        localhost = self.host == "localhost" or self.host.endswith(".localhost")
        return ("127.0.0.1" if localhost else self.host, self.port)


@dataclass(frozen=True)
class Tunnel:
    """How to reach one exposed port: ``url`` (HTTPS/H2 ports), the
    ``host`` name, the ``tls`` endpoint and the ``raw`` TCP endpoint."""

    port: int
    kind: str
    host: str
    url: str | None = None
    tls: Endpoint | None = None
    raw: Endpoint | None = None
    require_token: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tunnel:
        tls, raw = data.get("tls"), data.get("raw")
        return cls(
            port=data["port"],
            kind=data["kind"],
            host=data.get("host", ""),
            url=data.get("url"),
            tls=Endpoint(**tls) if tls else None,
            raw=Endpoint(**raw) if raw else None,
            require_token=bool(data.get("require_token")),
        )


class Tunnels(dict[int, Tunnel]):
    """``sandbox.tunnels()``: port → :class:`Tunnel`, plus the relay's CA
    (``ca_pem`` when Warren generated it, ``ca_fingerprint``, SHA-256) and
    whether the relay is connected."""

    def __init__(
        self,
        tunnels: dict[int, Tunnel],
        ca_pem: str | None,
        ca_fingerprint: str | None,
        relay_connected: bool,
    ) -> None:
        super().__init__(tunnels)
        self.ca_pem = ca_pem
        self.ca_fingerprint = ca_fingerprint
        self.relay_connected = relay_connected

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context for the tunnels: trusting the relay's CA
        when Warren generated it, else the system's roots."""
        return ssl.create_default_context(cadata=self.ca_pem)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tunnels:
        tunnels = {t["port"]: Tunnel.from_json(t) for t in data.get("tunnels", [])}
        return cls(
            tunnels,
            data.get("ca_pem"),
            data.get("ca_fingerprint"),
            bool(data.get("relay_connected")),
        )


@dataclass(frozen=True)
class ConnectToken:
    """A connect token; ``token`` (the secret) is only shown at creation."""

    token_id: str
    token: str
    port: int
    url: str
    expires_at: str


@dataclass(frozen=True)
class ConnectTokenInfo:
    """A connect token's metadata."""

    token_id: str
    port: int
    created_at: str
    expires_at: str
    revoked_at: str | None = None
    user_data: str | None = None


@dataclass(frozen=True)
class ExecResult:
    """How a buffered exec (:meth:`Sandbox.run`) ended, with its output."""

    exit_code: int
    stdout: str
    stderr: str
    signal: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False


@dataclass(frozen=True)
class BackgroundExecInfo:
    """A background exec's state (``GET .../execs/{exec_id}``)."""

    id: str
    sandbox_id: str
    pid: int
    command: list[str]
    state: str
    tty: bool = False
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    started_at: str = ""
    ended_at: str | None = None
    output_bytes: int = 0
    output_dropped: int = 0


@dataclass(frozen=True)
class FileInfo:
    """A file or directory in a sandbox."""

    path: str
    kind: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime: str
    path_b64: str | None = None
    symlink_target: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind == "directory"

    @property
    def is_file(self) -> bool:
        return self.kind == "file"


@dataclass(frozen=True)
class FileEvent:
    """A change under a watched path: ``kind`` is ``created``, ``modified``,
    ``attributes``, ``deleted``, ``moved_from``, ``moved_to`` or
    ``overflow`` (events were lost: rescan)."""

    kind: str
    path: str
    is_dir: bool = False
    cookie: int = 0
    path_b64: str | None = None


@dataclass(frozen=True)
class ArchiveResult:
    """What an uploaded directory became."""

    files: int = 0
    directories: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImageInfo:
    """An image in the node's store."""

    id: str
    names: list[str] = field(default_factory=list)
    manifest_digest: str | None = None
    created: str | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SnapshotInfo:
    """What a filesystem or directory snapshot produced."""

    image_id: str
    name: str | None = None
    expires_at: str | None = None
    layer_bytes: int = 0
    layer_entries: int = 0
    frozen_ms: float = 0.0
    took_ms: float = 0.0


@dataclass(frozen=True)
class MemorySnapshotInfo:
    """A memory snapshot (``GET /v1/memory-snapshots/{id}``): a checkpoint
    of a whole running sandbox, restorable as new sandboxes."""

    id: str
    sandbox_id: str = ""
    image: str = ""
    """Id of the image the snapshot stands on (kept while it exists)."""
    created_at: str = ""
    bytes: int = 0
    expires_at: str | None = None


@dataclass(frozen=True)
class PushResult:
    """The result of a push."""

    target: str
    manifest_digest: str
    pushed_blobs: int = 0
    skipped_blobs: int = 0
    pushed_bytes: int = 0


@dataclass(frozen=True)
class GcReport:
    """What an image garbage collection removed."""

    images_removed: int = 0
    layers_removed: int = 0
    blobs_removed: int = 0
    tmp_removed: int = 0
    bytes_freed: int = 0

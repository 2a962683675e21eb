"""The asyncio API: the same classes and methods as ``warren``, as
coroutines (``await warren.aio.Sandbox.create(...)``).

Iterating a process's output, file watches and image events are async
iterators here; everything else returns the same data types.
"""

from ._admin import Token, Workspace
from ._client import Client
from ._filesystem import Filesystem, FileWatcher
from ._image import Image
from ._memory import MemorySnapshot
from ._process import Process, StdinWriter, StreamReader
from ._sandbox import BackgroundExec, Sandbox

__all__ = [
    "BackgroundExec",
    "Client",
    "FileWatcher",
    "Filesystem",
    "Image",
    "MemorySnapshot",
    "Process",
    "Sandbox",
    "StdinWriter",
    "StreamReader",
    "Token",
    "Workspace",
]

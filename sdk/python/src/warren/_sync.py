"""The sync API: generated facades over the async classes.

The SDK is written once, with asyncio (``warren.aio``). :func:`synchronize`
derives a blocking class from each async one: coroutine methods run on one
private event loop in a daemon thread (:data:`bridge`) and the caller
blocks on the result; async iterators become iterators; async context
managers become context managers; results that are async SDK objects come
back wrapped in their sync class, and sync SDK objects passed as arguments
are unwrapped. Any number of threads may call at once: they all submit to
the same loop, which multiplexes their calls over the client's pool.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class _Bridge:
    """One event loop in a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._loop is not None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=main, name="warren-sync", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def on_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` on the loop and blocks until it is done; an
        interrupt (Ctrl-C) of the caller cancels it."""
        loop = self.loop()
        if self.on_loop_thread():
            coro.close()
            raise RuntimeError(
                "the sync warren API was called from the SDK's own event loop "
                "(a progress callback?); use warren.aio there"
            )
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise


bridge = _Bridge()

_SYNC_OF: dict[type, type] = {}


def wrap(value: Any) -> Any:
    """An async SDK object (or a list, tuple or plain dict of them) as its
    sync facade; async iterators as :class:`SyncIterator`."""
    sync_cls = _SYNC_OF.get(type(value))
    if sync_cls is not None:
        obj: Any = object.__new__(sync_cls)
        obj._inner = value
        return obj
    if type(value) in (list, tuple):
        return type(value)(wrap(v) for v in value)
    if type(value) is dict:
        return {k: wrap(v) for k, v in value.items()}
    if hasattr(value, "__anext__"):
        return SyncIterator(value)
    return value


def unwrap(value: Any) -> Any:
    """The async object behind a sync facade (also inside lists, tuples,
    plain dicts)."""
    inner = getattr(value, "_inner", None)
    if inner is not None and type(value) in _SYNC_OF.values():
        return inner
    if type(value) in (list, tuple):
        return type(value)(unwrap(v) for v in value)
    if type(value) is dict:
        return {k: unwrap(v) for k, v in value.items()}
    return value


def call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Calls ``fn`` with unwrapped arguments, runs it to completion on the
    bridge if it is a coroutine, and wraps the result."""
    if bridge.on_loop_thread():
        bridge.run(_awaited(None))  # raises: blocking here would deadlock the loop
    result = fn(*unwrap(args), **unwrap(kwargs))
    if inspect.isawaitable(result):
        result = bridge.run(_awaited(result))
    return wrap(result)


async def _awaited(aw: Any) -> Any:
    return await aw


class SyncIterator(Iterator[Any]):
    """An async iterator driven from sync code, one item per loop hop."""

    def __init__(self, ait: AsyncIterator[Any]) -> None:
        self._ait = ait

    def __iter__(self) -> SyncIterator:
        return self

    def __next__(self) -> Any:
        try:
            return wrap(bridge.run(_awaited(self._ait.__anext__())))
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Stops the iteration and releases what it holds (a stream)."""
        aclose = getattr(self._ait, "aclose", None)
        if aclose is not None:
            bridge.run(_awaited(aclose()))

    def __enter__(self) -> SyncIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _method(name: str) -> Callable[..., Any]:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return call(getattr(self._inner, name), args, kwargs)

    return method


def _classmethod(acls: type, name: str) -> classmethod[Any, Any, Any]:
    def method(cls: type, *args: Any, **kwargs: Any) -> Any:
        return call(getattr(acls, name), args, kwargs)

    return classmethod(method)


def _property(name: str) -> property:
    return property(lambda self: wrap(getattr(self._inner, name)))


_DUNDERS = {
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "__repr__": "__repr__",
    "__str__": "__str__",
    "__eq__": "__eq__",
    "__hash__": "__hash__",
    "__len__": "__len__",
}


def synchronize(acls: type) -> Any:
    """The blocking twin of async class ``acls`` (same names, same docs)."""
    ns: dict[str, Any] = {
        "__doc__": acls.__doc__,
        "__module__": "warren",
        "__qualname__": acls.__name__,
        "__slots__": ("_inner",),
    }
    for klass in reversed(acls.__mro__[:-1]):
        for name, raw in vars(klass).items():
            target = _DUNDERS.get(name, name)
            if name.startswith("_") and name not in _DUNDERS:
                continue
            if isinstance(raw, property):
                ns[target] = _property(name)
                ns[target].__doc__ = raw.__doc__
            elif isinstance(raw, (classmethod, staticmethod)):
                ns[target] = _classmethod(acls, name)
                functools.update_wrapper(ns[target].__func__, raw.__func__)
            elif callable(raw):
                ns[target] = functools.wraps(raw)(_method(name))
                if name == "__anext__":
                    ns[target] = _next_method()
    if "__aiter__" in ns or any("__aiter__" in vars(k) for k in acls.__mro__):
        ns["__iter__"] = _iter_method()
    ns["__getattr__"] = _getattr
    sync_cls = type(acls.__name__, (), ns)
    _SYNC_OF[acls] = sync_cls
    return sync_cls


def _getattr(self: Any, name: str) -> Any:
    """Plain instance attributes of the async object (``pid``, ``stdout``,
    ``filesystem``, ...), wrapped."""
    if name.startswith("_"):
        raise AttributeError(name)
    return wrap(getattr(self._inner, name))


def _iter_method() -> Callable[[Any], Iterator[Any]]:
    def __iter__(self: Any) -> Iterator[Any]:
        return SyncIterator(self._inner.__aiter__())

    return __iter__


def _next_method() -> Callable[[Any], Any]:
    def __next__(self: Any) -> Any:
        try:
            return call(self._inner.__anext__, (), {})
        except StopAsyncIteration:
            raise StopIteration from None

    return __next__

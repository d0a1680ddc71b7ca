"""A TCP fault proxy: one listener per link, forwarding bytes to the real address, with modes
switchable while traffic flows.

It works below any protocol (HTTP, gRPC to Temporal, NATS, PostgreSQL's wire protocol), so one
proxy serves every link of the stack. The modes are the network faults a real deployment meets:

- `pass`: bytes forwarded as they come.
- `latency`: each chunk, either way, waits a delay drawn from `latency` (seconds, min and max).
- `partition`: nothing moves. New connections are accepted and then held without a byte in either
  direction, and open ones stall: callers hang until their own timeouts, as behind a dead switch,
  rather than being refused (a refusal is a different and much kinder fault). On heal the held
  bytes flow again.
- `cut`: a connection that carries a chunk from the client has it forwarded upstream and is then
  reset both ways: the server may act on the request, and its answer never arrives.

The links run on one asyncio loop in a thread of their own, so that the caller's blocking work
(killing and restarting processes) never stalls the traffic, and modes are set from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

T = TypeVar("T")


class Mode(StrEnum):
    PASS = "pass"
    LATENCY = "latency"
    PARTITION = "partition"
    CUT = "cut"


@dataclass
class LinkStats:
    connections: int = 0
    cut: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    # time.perf_counter() of the last bytes the upstream answered with: the link worked then.
    last_answer: float | None = None


@dataclass
class Watch:
    """The first answer over a link after a moment (a heal): how long the link took to work again."""

    since: float
    answered_at: float | None = None

    @property
    def recovery(self) -> float | None:
        return None if self.answered_at is None else self.answered_at - self.since


@dataclass
class Link:
    name: str
    target: tuple[str, int]
    port: int = 0
    mode: Mode = Mode.PASS
    latency: tuple[float, float] = (0.2, 0.8)
    stats: LinkStats = field(default_factory=LinkStats)
    _flowing: asyncio.Event | None = None
    _server: asyncio.Server | None = None
    _open: set[asyncio.StreamWriter] = field(default_factory=set)
    _watches: list[Watch] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class FaultProxy:
    """Links on one loop in a daemon thread; `add` before or after `start`, `set` from any thread."""

    def __init__(self, seed: int = 0) -> None:
        self.links: dict[str, Link] = {}
        self.random = random.Random(seed)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fault-proxy")
        self.thread.start()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def add(self, name: str, host: str, port: int) -> Link:
        """A listener on a free local port that forwards to `host:port`."""
        link = Link(name, (host, port))
        self._call(self._listen(link))
        self.links[name] = link
        return link

    async def _listen(self, link: Link) -> None:
        link._flowing = asyncio.Event()
        link._flowing.set()
        link._server = await asyncio.start_server(
            lambda r, w: self._connection(link, r, w), "127.0.0.1", link.port or None
        )
        sock: socket.socket = link._server.sockets[0]
        link.port = int(sock.getsockname()[1])

    def set(self, name: str, mode: Mode, latency: tuple[float, float] | None = None) -> None:
        link = self.links[name]

        def apply() -> None:
            assert link._flowing is not None
            if latency is not None:
                link.latency = latency
            link.mode = mode
            if mode == Mode.PARTITION:
                link._flowing.clear()
            else:
                link._flowing.set()

        self.loop.call_soon_threadsafe(apply)

    def heal(self, name: str) -> Watch:
        """Back to `pass`; the watch tells when the link next answered."""
        self.set(name, Mode.PASS)
        watch = Watch(time.perf_counter())
        # After the mode change on the loop, so that no answer of the fault counts as the recovery.
        self.loop.call_soon_threadsafe(self.links[name]._watches.append, watch)
        return watch

    def answered_since(self, name: str, moment: float) -> bool:
        last = self.links[name].stats.last_answer
        return last is not None and last > moment

    def stop(self) -> None:
        async def close() -> None:
            for link in self.links.values():
                if link._server is not None:
                    link._server.close()
                for writer in list(link._open):
                    writer.transport.abort()

        with contextlib.suppress(Exception):
            self._call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    # ---- the traffic ---------------------------------------------------------------------

    async def _connection(
        self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert link._flowing is not None
        link.stats.connections += 1
        link._open.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            # A partitioned link accepts and then says nothing: the caller's connect succeeds and hangs.
            await link._flowing.wait()
            try:
                up_reader, upstream = await asyncio.open_connection(*link.target)
            except OSError:
                return  # the real server is down: the caller sees its connection closed
            link._open.add(upstream)
            pumps = [
                asyncio.create_task(self._pump(link, reader, upstream, towards_server=True, peer=writer)),
                asyncio.create_task(self._pump(link, up_reader, writer, towards_server=False, peer=upstream)),
            ]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            for end in (writer, upstream):
                if end is not None:
                    link._open.discard(end)
                    with contextlib.suppress(Exception):
                        end.close()

    async def _pump(
        self,
        link: Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        towards_server: bool,
        peer: asyncio.StreamWriter,
    ) -> None:
        assert link._flowing is not None
        try:
            while chunk := await source.read(65536):
                await link._flowing.wait()
                if link.mode == Mode.LATENCY:
                    await asyncio.sleep(self.random.uniform(*link.latency))
                    await link._flowing.wait()
                if towards_server:
                    link.stats.bytes_up += len(chunk)
                else:
                    # Counted before the write: the caller must not see the answer before the link does.
                    link.stats.bytes_down += len(chunk)
                    link.stats.last_answer = time.perf_counter()
                    for watch in link._watches:
                        watch.answered_at = link.stats.last_answer
                    link._watches.clear()
                sink.write(chunk)
                await sink.drain()
                if link.mode == Mode.CUT and towards_server:
                    # The request went out; reset both ends before any answer can come back.
                    link.stats.cut += 1
                    sink.transport.abort()
                    peer.transport.abort()
                    return
            if sink.can_write_eof():
                sink.write_eof()
        except (ConnectionError, OSError):
            sink.transport.abort()
            peer.transport.abort()

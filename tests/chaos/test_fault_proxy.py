"""The chaos run's TCP fault proxy, against a real HTTP server: each mode does to a caller what the
network fault it stands for would, and a heal brings the link back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ordersaga.faults.proxy import FaultProxy, Mode


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so that a connection can be open when a fault starts
    posts: list[bytes] = []

    def do_GET(self) -> None:
        self._answer(b"pong")

    def do_POST(self) -> None:
        try:
            body = self.rfile.read(int(self.headers["Content-Length"]))
        except OSError:  # reset by a cut before the body came
            body = b""
        Handler.posts.append(body)
        self._answer(b"done")

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield int(httpd.server_address[1])
    httpd.shutdown()


@pytest.fixture
def proxy(server: int) -> Iterator[tuple[FaultProxy, str]]:
    faults = FaultProxy(seed=1)
    link = faults.add("web", "127.0.0.1", server)
    yield faults, f"http://{link.address}"
    faults.stop()


def test_pass_forwards_requests_and_answers(proxy: tuple[FaultProxy, str]) -> None:
    faults, url = proxy
    with httpx.Client(base_url=url, timeout=5) as client:
        assert client.get("/").text == "pong"
        assert client.post("/", content=b"hello").text == "done"
    assert Handler.posts[-1] == b"hello"
    assert faults.links["web"].stats.connections == 1  # one kept-alive connection carried both


def test_latency_delays_every_exchange_until_healed(proxy: tuple[FaultProxy, str]) -> None:
    faults, url = proxy
    with httpx.Client(base_url=url, timeout=5) as client:
        client.get("/")
        faults.set("web", Mode.LATENCY, latency=(0.3, 0.4))
        time.sleep(0.05)
        began = time.perf_counter()
        assert client.get("/").text == "pong"
        slow = time.perf_counter() - began
        faults.heal("web")
        time.sleep(0.05)
        began = time.perf_counter()
        client.get("/")
        fast = time.perf_counter() - began
    # A delay each way on the same open connection: at least 0.6 s, well under a timeout.
    assert 0.6 <= slow < 2.0, slow
    assert fast < 0.2, fast


def test_partition_hangs_new_and_open_connections_then_heals(proxy: tuple[FaultProxy, str]) -> None:
    faults, url = proxy
    with (
        httpx.Client(base_url=url, timeout=0.5) as open_client,
        httpx.Client(base_url=url, timeout=0.5) as fresh,
    ):
        open_client.get("/")
        faults.set("web", Mode.PARTITION)
        time.sleep(0.05)
        # Not refused: the connection is accepted and then nothing comes back, on either connection.
        with pytest.raises(httpx.ReadTimeout):
            fresh.get("/")
        with pytest.raises(httpx.ReadTimeout):
            open_client.get("/")
        held_at = time.perf_counter()
        assert not faults.answered_since("web", held_at)
        watch = faults.heal("web")
        with httpx.Client(base_url=url, timeout=5) as after:
            assert after.get("/").text == "pong"
    assert faults.answered_since("web", watch.since)
    assert watch.recovery is not None and 0 < watch.recovery < 1, watch


def test_a_request_held_by_a_partition_goes_through_once_healed(proxy: tuple[FaultProxy, str]) -> None:
    faults, url = proxy
    faults.set("web", Mode.PARTITION)
    time.sleep(0.05)
    answers: list[str] = []
    caller = threading.Thread(target=lambda: answers.append(httpx.get(url + "/", timeout=10).text))
    caller.start()
    time.sleep(0.8)
    assert answers == []  # still hanging
    faults.heal("web")
    caller.join(timeout=5)
    assert answers == ["pong"]


def test_cut_lets_the_request_start_and_drops_the_answer(proxy: tuple[FaultProxy, str]) -> None:
    faults, url = proxy
    faults.set("web", Mode.CUT)
    time.sleep(0.05)
    before = len(Handler.posts)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.post(url + "/", content=b"charge-once", timeout=5)
    # The server saw the request begin (the fault a retried non-idempotent call must survive): all
    # of it, or only what came in the first chunk (the client may write headers and body apart).
    deadline = time.monotonic() + 2
    while len(Handler.posts) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(Handler.posts) == before + 1
    assert b"charge-once".startswith(Handler.posts[before])
    assert faults.links["web"].stats.cut == 1
    faults.heal("web")
    time.sleep(0.05)
    assert httpx.get(url + "/", timeout=5).text == "pong"


def test_a_dead_upstream_closes_the_callers_connection() -> None:
    faults = FaultProxy()
    try:
        with httpx.Client(timeout=2) as client:
            link = faults.add("nothing", "127.0.0.1", _closed_port())
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                client.get(f"http://{link.address}/")
    finally:
        faults.stop()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_quiet_healed_link_is_timed_by_a_probe_of_its_protocol() -> None:
    """The chaos run's probe gets an answer through a link nobody uses after its heal: here the
    machine's PostgreSQL (an SSLRequest answered with one byte) and an HTTP server."""
    from ordersaga.chaos import probe_link
    from tests.support.databases import postgres_admin_url, postgres_reachable
    from tests.support.prerequisites import missing

    admin = postgres_admin_url()
    if problem := postgres_reachable(admin):
        missing(f"PostgreSQL at {admin}: {problem}")
    real = httpx.URL(admin.replace("postgresql://", "http://", 1))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = FaultProxy()
    try:
        proxy.add("users->postgres", real.host or "127.0.0.1", real.port or 5432)
        proxy.add("worker->payments", "127.0.0.1", server.server_address[1])
        for name in ("users->postgres", "worker->payments"):
            proxy.set(name, Mode.PARTITION)
            watch = proxy.heal(name)
            time.sleep(0.2)
            assert watch.answered_at is None, "nothing went over the link yet"
            probe_link(proxy.links[name].address, name)
            deadline = time.monotonic() + 5
            while watch.answered_at is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert watch.recovery is not None and watch.recovery < 5, name
    finally:
        proxy.stop()
        server.shutdown()

"""`ordersaga up` gives every process a port of its own, and a process is ready only when it is the
one answering on that port.

A chaos run with 3 replicas once gave `orders-3` the port of `users-3`: the picker only checked that
nothing listened yet, and the whole stack picks its ports before any child binds one. `orders-3`
failed to bind and exited, but its readiness probe got `users-3`'s 200, so `up` took it for ready and
the gateway sent a third of the orders traffic to the users service (404s, cancelled orders).
"""

from __future__ import annotations

import io
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

from ordersaga.supervisor import Child, StartupError, Supervisor, free_port
from ordersaga.up import _http


def test_no_port_is_handed_out_twice_even_before_any_is_bound() -> None:
    ports = [free_port() for _ in range(300)]  # more than a 3-replica stack with 2 gateways needs
    assert len(set(ports)) == len(ports)


class _AnswersAsUsers(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"status": "ready", "service": "users"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def users_on_a_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _AnswersAsUsers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_replica_that_could_not_bind_is_not_taken_for_ready(users_on_a_port: int, tmp_path: Path) -> None:
    supervisor = Supervisor(Console(file=io.StringIO()))
    # Stands in for `ordersaga serve orders --port P` finding P taken: it says so and exits.
    exits = [sys.executable, "-c", "import sys, time; time.sleep(1); sys.exit('address already in use')"]
    ready = f"http://127.0.0.1:{users_on_a_port}/ready"
    child = Child("orders-3", exits, {}, _http(ready, "orders"), tmp_path / "orders-3.log")
    supervisor.start(child)
    try:
        with pytest.raises(StartupError, match="exited"):
            supervisor.wait_ready(child, 20)
    finally:
        supervisor.stop_all()
    # The service that does own the port is ready there.
    assert _http(ready, "users")()

"""A private PostgreSQL server for one test module: its own data directory and port, stoppable.

The suite's shared PostgreSQL (ORDERSAGA_TEST_POSTGRES_URL) must stay up for everyone else, so a
test that takes the database away runs its own. PostgreSQL refuses to run as root: as root the
server runs as the `postgres` system user, otherwise as the current user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import asyncpg

from tests.support.databases import run_in_thread
from tests.support.prerequisites import missing
from tests.support.processes import ManagedProcess, free_port, tcp_open


def postgres_bin() -> Path:
    """The newest installed server's bin directory, or skip (fail in CI) saying how to get one."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    missing("PostgreSQL server binaries (initdb, postgres) are not installed: `apt-get install postgresql`")


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        missing("running as root needs a `postgres` system user to run a private PostgreSQL server")
    return ["runuser", "-u", "postgres", "--"]


class PrivatePostgres:
    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.prefix = _run_as()
        # Not under pytest's tmp_path: that is private to root, and the server runs as `postgres`.
        self.directory = Path(tempfile.mkdtemp(prefix="ordersaga-outage-pg-"))
        self.data = self.directory / "data"
        if self.prefix:
            shutil.chown(self.directory, "postgres", "postgres")
        self.port = free_port()
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> PrivatePostgres:
        subprocess.run(
            [*self.prefix, str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
             "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return self

    def start(self, timeout: float = 30.0) -> PrivatePostgres:
        argv = [
            *self.prefix, str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-k", str(self.directory), "-c", "listen_addresses=127.0.0.1",
            # Durability is not what these tests are about; speed on a shared machine is.
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        self.process = ManagedProcess(
            "postgres", argv, self.directory / "postgres.log", ready=self._answers
        ).start(timeout)
        return self

    def _answers(self) -> bool:
        async def probe() -> None:
            conn = await asyncpg.connect(self.url, timeout=1)
            await conn.close()

        if not tcp_open(self.port):
            return False
        run_in_thread(probe())
        return True

    def stop(self) -> None:
        """A fast shutdown, as an operator's `pg_ctl stop` does: every session is cut off."""
        if self.process is None or self.process.proc is None:
            return
        # To the postmaster only: it terminates its backends itself.
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGINT)
        deadline = time.monotonic() + 30
        while self.process.running and time.monotonic() < deadline:
            time.sleep(0.05)
        self.process.stop()
        self.process = None

    def _server_processes(self) -> list[int]:
        """The postmaster and every child of it. Each backend is a process group of its own
        (PostgreSQL makes it one), so signalling the postmaster's group would miss them."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        found, frontier = [postmaster], [postmaster]
        while frontier:
            for task in Path(f"/proc/{frontier.pop()}/task").glob("*/children"):
                try:
                    kids = [int(kid) for kid in task.read_text().split()]
                except OSError:
                    continue
                found += kids
                frontier += kids
        return found

    def pause(self) -> None:
        """Freeze the server and its sessions: connections stay open and nothing answers."""
        for pid in self._server_processes():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in reversed(self._server_processes()):
            os.kill(pid, signal.SIGCONT)

    def destroy(self) -> None:
        if self.process is not None:
            with suppress(OSError):
                self.resume()
            self.process.kill()
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)

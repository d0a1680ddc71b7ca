"""A PostgreSQL server of the chaos run's own, so that the run may restart it (`postgres-restart`).

The machine's shared server must stay up for everything else that uses it, so a run that restarts
PostgreSQL initialises a private one (`initdb`, trust auth on 127.0.0.1, a free port) and runs it as
a child of the stack's supervisor. PostgreSQL refuses to run as root: as root it runs as the
`postgres` system user, in a directory that user owns.
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
from pathlib import Path

from ordersaga.supervisor import Child, Supervisor, free_port


def server_bin() -> Path | None:
    """The newest installed server's bin directory (Debian's layout), or initdb's on the PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path and shutil.which("postgres") else None


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    pwd.getpwnam("postgres")  # KeyError: no user to run the server as
    return ["runuser", "-u", "postgres", "--"]


class OwnPostgres:
    def __init__(self, logs: Path, directory: Path | None = None) -> None:
        """A new server, or (`directory`) the one a run kept, to be started again on a new port."""
        bin_dir = server_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL's server binaries (initdb, postgres) are not installed")
        self.bin = bin_dir
        self.prefix = _run_as()
        # Not under the data dir: that may be private to root, and the server may run as `postgres`.
        self.directory = directory or Path(tempfile.mkdtemp(prefix="ordersaga-chaos-pg-"))
        if self.prefix and directory is None:
            shutil.chown(self.directory, "postgres", "postgres")
        self.data = self.directory / "data"
        self.port = free_port()
        self.logs = logs

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        subprocess.run(  # noqa: S603 - argv built here, never from input
            [*self.prefix, str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
             "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )  # fmt: skip

    def child(self) -> Child:
        argv = [
            *self.prefix, str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-k", str(self.directory), "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300",
            # A chaos run is about failures, not durability: no fsync on the shared disk.
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        return Child(
            name="postgres", argv=argv, env={}, ready=self._answers, log_file=self.logs / "postgres.log"
        )

    def _answers(self) -> bool:
        result = subprocess.run(  # noqa: S603 - argv built here, never from input
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def restart(self, supervisor: Supervisor, child: Child, timeout: float = 60) -> None:
        """A fast shutdown (`pg_ctl stop -m fast`: every session cut off), then a start on the same data."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGINT)
        assert child.proc is not None
        child.proc.wait(timeout=timeout)
        self.wait_stopped(timeout)
        supervisor.restart(child, timeout)

    def wait_stopped(self, timeout: float = 60) -> None:
        """Until the postmaster has left (its `postmaster.pid` gone): stopping the supervised child
        signals the `runuser` wrapper, and the server may still be shutting down after it exits."""
        deadline = time.monotonic() + timeout
        pid_file = self.data / "postmaster.pid"
        while pid_file.exists() and time.monotonic() < deadline:
            try:
                os.kill(int(pid_file.read_text().split()[0]), 0)
            except (ProcessLookupError, ValueError, IndexError, FileNotFoundError):
                return  # a stale file of a server that is gone: the next start takes it over
            time.sleep(0.1)

    def start_alone(self, timeout: float = 60) -> subprocess.Popen[bytes]:
        """The server outside any supervisor (to audit or break a kept run's databases)."""
        self.wait_stopped(timeout)
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / "postgres.log").open("ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - argv built here, never from input
                list(self.child().argv), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL in {self.data} did not start (see {self.logs / 'postgres.log'})"
                )
            time.sleep(0.2)
        return proc

    def stop_alone(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        if proc.poll() is None:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(postmaster, signal.SIGINT)
            proc.wait(timeout=timeout)

    def destroy(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

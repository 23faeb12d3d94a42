"""A throwaway PostgreSQL server for the import pipeline: Debian's postgresql, on this VM's address.

The pipeline's workers (real pods on the real node) load their records into it, so it listens on
the VM's own address, which pods reach through the CNI bridge (the network rule: nothing leaves
this machine). Password authentication for everyone but the local superuser.

Usage::

    python -m e2e.postgres serve          # until Ctrl-C; prints the DSN
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from e2e import realnode

USER = "importer"
PASSWORD = "importer-local"  # a local test server's
DATABASE = "imports"


@dataclasses.dataclass(frozen=True)
class Server:
    host: str
    port: int
    socket_dir: Path

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@{self.host}:{self.port}/{DATABASE}"

    def psql(self, sql: str) -> str:
        """Run ``sql`` as the superuser over the local socket; its output, unaligned, tuples only."""
        out = subprocess.run(
            ["runuser", "-u", "postgres", "--", _bin("psql"), "-h", str(self.socket_dir), "-p", str(self.port),
             "-d", DATABASE, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return out.stdout.strip()


def _bin(name: str) -> str:
    """A PostgreSQL program of the newest version installed (Debian's ``postgresql``, installed if missing)."""

    def found() -> list[str]:
        return sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))

    if not found():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        install = ["apt-get", "install", "-y", "-qq", "postgresql"]
        subprocess.run(install, check=True, env=env, stdout=subprocess.DEVNULL)
    return found()[-1]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(log: Path | None = None, host: str | None = None) -> Iterator[Server]:
    """A fresh server with database ``imports`` and role ``importer``, while the context lasts.

    Its files live in a folder of its own the ``postgres`` user can reach (not under a caller's
    private temporary folder), removed at the end; its log is copied to ``log``.
    """
    host = host or realnode.node_ip()
    initdb = _bin("initdb")  # first: installing PostgreSQL also makes the postgres user
    root = Path(tempfile.mkdtemp(prefix="jobbatch-postgres-"))
    root.chmod(0o755)
    data, sockets = root / "data", root / "sockets"
    for folder in (data, sockets):
        folder.mkdir()
        shutil.chown(folder, "postgres", "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_postgres, initdb, "-D", str(data), "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256"], check=True, capture_output=True)  # fmt: skip
    with (data / "pg_hba.conf").open("a") as hba:  # the pods' bridge, and this VM
        hba.write(f"host all all {realnode.POD_SUBNET} scram-sha-256\nhost all all {host}/32 scram-sha-256\n")
    port = _free_port(host)
    server_log = root / "postgres.log"
    with server_log.open("ab") as out:
        proc = subprocess.Popen(
            [_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
             "-c", f"listen_addresses={host}", "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            user="postgres", group="postgres", extra_groups=[], cwd=root,
        )  # fmt: skip
    server = Server(host, port, sockets)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([_bin("pg_isready"), "-h", host, "-p", str(port)], capture_output=True).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = server_log.read_text(errors="replace")[-2000:] if server_log.exists() else ""
                raise RuntimeError(f"postgres did not start:\n{tail}")
            time.sleep(0.2)
        admin = ["runuser", "-u", "postgres", "--", _bin("psql"), "-h", str(sockets), "-p", str(port), "-d", "postgres"]
        subprocess.run(
            [*admin, "-c", f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"], check=True, capture_output=True
        )
        subprocess.run([*admin, "-c", f"CREATE DATABASE {DATABASE} OWNER {USER}"], check=True, capture_output=True)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # fast shutdown
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if log is not None and server_log.exists():
            shutil.copyfile(server_log, log)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.postgres", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="serve a fresh database until interrupted")
    parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill %1` stops the server too
    with serving() as server:
        print(f"serving {server.dsn}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())

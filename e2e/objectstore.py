"""A local S3 server for object-storage payloads: versitygw over a folder, on this VM's address.

Tests and the import example need a real S3 API (signed requests, ranged GETs, ETags,
``If-Match``), not a mock: versitygw (built from the Go module proxy, ``e2e/tools.py``) serves
one over a local folder. It listens on the VM's own address, so both the operator (a process
here) and worker pods on the real node (behind the CNI bridge) reach it.

Usage::

    python -m e2e.objectstore serve DIR          # until Ctrl-C; prints the endpoint and keys
    python -m e2e.objectstore put ENDPOINT BUCKET KEY FILE
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from e2e import realnode, tools
from jobbatch import objectstore

# Root keys of the local test server only (it holds test data on this machine).
ACCESS_KEY = "jobbatch-local"
SECRET_KEY = "jobbatch-local-secret"
CREDENTIALS = objectstore.Credentials(ACCESS_KEY, SECRET_KEY)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _send(method: str, url: str, body: bytes = b"", credentials: objectstore.Credentials = CREDENTIALS) -> int:
    now = datetime.datetime.now(datetime.UTC)
    headers = objectstore.sign(method, url, {}, credentials, "us-east-1", now, hashlib.sha256(body).hexdigest())
    request = urllib.request.Request(url, data=body if method == "PUT" else None, method=method)
    for name, value in headers.items():
        if name != "host":
            request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0  # not listening (yet)


def create_bucket(endpoint: str, bucket: str) -> None:
    status = _send("PUT", f"{endpoint}/{bucket}")
    if status not in (200, 409):  # 409: it exists already
        raise RuntimeError(f"creating bucket {bucket}: HTTP {status}")


def put_object(endpoint: str, bucket: str, key: str, data: bytes) -> None:
    url = f"{endpoint}/{bucket}/{objectstore._quote_path(key)}"
    status = _send("PUT", url, data)
    if status != 200:
        raise RuntimeError(f"putting {bucket}/{key}: HTTP {status}")


@contextlib.contextmanager
def serving(root: Path, log: Path, host: str | None = None) -> Iterator[str]:
    """versitygw serving ``root`` (one folder per bucket) while the context lasts; yields its endpoint."""
    host = host or realnode.node_ip()
    binary = tools.ensure(["versitygw"]) / "versitygw"
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port(host)
    env = {**os.environ, "ROOT_ACCESS_KEY": ACCESS_KEY, "ROOT_SECRET_KEY": SECRET_KEY}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(binary), "--port", f"{host}:{port}", "posix", str(root)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    endpoint = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 60
        while _send("GET", f"{endpoint}/") != 200:  # ListBuckets answers once it serves
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"versitygw did not start serving {endpoint}; see {log}")
            time.sleep(0.2)
        yield endpoint
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.objectstore", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve DIR until interrupted")
    p_serve.add_argument("dir", type=Path)
    p_put = sub.add_parser("put", help="upload FILE as BUCKET/KEY (creating the bucket)")
    for name in ("endpoint", "bucket", "key"):
        p_put.add_argument(name)
    p_put.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "serve":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill %1` stops the server too
        with serving(args.dir, args.dir.with_suffix(".log")) as endpoint:
            print(f"serving {args.dir} at {endpoint} (access key {ACCESS_KEY}, secret key {SECRET_KEY})", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        return 0
    create_bucket(args.endpoint, args.bucket)
    put_object(args.endpoint, args.bucket, args.key, args.file.read_bytes())
    print(f"{args.endpoint}/{args.bucket}/{args.key}: {args.file.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real S3 endpoint on localhost for tests and bench/storage.py: moto's server mode (HTTP, its own thread),
and a tiny TCP proxy in front of it that counts the bytes it relays and injects faults by a cyclic schedule,
one character per connection: "." relays, "r" cuts the connection with a TCP reset after a few bytes of the
response, "f" answers `503 SlowDown` (S3's throttling reply). moto's server speaks HTTP/1.0: one request per
connection, so the schedule is one per request.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from typing import Iterator

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
_BODY = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Reduce your request rate</Message></Error>'
SLOW_DOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n"
             b"Connection: close\r\n\r\n%s" % (len(_BODY), _BODY))


@contextlib.contextmanager
def moto_s3(bucket: str = "avemo-test", process: bool = False) -> Iterator[str]:
    """Start moto's S3 server on a free port (a thread here, or with `process` its own `moto_server` process,
    as a real endpoint would be: no share of this process's GIL), create `bucket`, set AWS_ENDPOINT_URL and
    dummy credentials in os.environ (subprocesses and Dask workers inherit them); yield the endpoint URL;
    restore everything."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    if process:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = SimpleNamespace(stop=lambda: (proc.kill(), proc.wait()))
        host = "127.0.0.1"
        deadline = time.time() + 60
        while not _listening(host, port):
            if time.time() > deadline or proc.poll() is not None:
                server.stop()
                raise RuntimeError("moto_server did not start")
            time.sleep(0.1)
    else:
        from moto.server import ThreadedMotoServer
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        import boto3
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


class FaultyProxy:
    """TCP proxy 127.0.0.1:port -> upstream (host, port); `relayed` counts response bytes passed on."""

    def __init__(self, upstream: tuple[str, int], schedule: str = ".", cut_after: int = 300):
        self.upstream, self.schedule, self.cut_after = upstream, schedule, cut_after
        self.connections = self.resets = self.failures = self.relayed = 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                mode = {"r": "reset", "f": "fail"}.get(self.schedule[(self.connections - 1) % len(self.schedule)], "ok")
            threading.Thread(target=self._serve, args=(client, mode), daemon=True).start()

    def _serve(self, client: socket.socket, mode: str) -> None:
        with client:
            if mode == "fail":
                client.recv(65536)
                client.sendall(SLOW_DOWN)
                with self.lock:
                    self.failures += 1
                return
            with socket.create_connection(self.upstream) as server:
                threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()
                budget = self.cut_after if mode == "reset" else None
                while data := _recv(server):
                    if budget is not None and len(data) >= budget:
                        client.sendall(data[:budget])
                        # SO_LINGER 0: closing sends RST ("connection reset" mid-response); shutdown first,
                        # or the relay thread blocked in recv() on this socket would keep it open
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        client.shutdown(socket.SHUT_RDWR)
                        with self.lock:
                            self.resets += 1
                        return
                    if budget is not None:
                        budget -= len(data)
                    client.sendall(data)
                    with self.lock:
                        self.relayed += len(data)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""

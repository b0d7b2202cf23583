"""A fault-injecting HTTP proxy for an S3 endpoint (moto's server), on 127.0.0.1 only.

    with FaultProxy(upstream, rate=0.15, seed=3) as proxy:
        options = {"client_kwargs": {"endpoint_url": proxy.url}, ...}
        ...  # every request through the proxy; a seeded 15% of them fail
    proxy.injected   # Counter: fault kind -> how many were injected
    proxy.summary()  # "61 requests, 8 failed (503 3, reset 3, truncate 2), 1 delayed"

It reads each request whole, decides whether and how to fail it, and forwards the rest to
`upstream` on a fresh connection. The kinds:

    500        HTTP 500 with S3's `InternalError` XML body (not forwarded)
    503        HTTP 503 with S3's `SlowDown` XML body (not forwarded)
    reset      forwarded; the headers and half the body sent, then a TCP reset (RST)
    truncate   forwarded; Content-Length says N, half the body sent, then the connection closed
    latency    forwarded after `latency` seconds (not a failure: counted, the request succeeds)
    corrupt    forwarded; one byte of a GET's body flipped and its `x-amz-checksum-*` headers
               dropped (bytes that no transport check catches: only a content hash does). Not
               in the default mix.

`kinds` weights the kinds (default: the first five, equally); `only(method, path)` limits which
requests may be failed (e.g. GETs of one key); `limit` caps the number of faults. `outage = True`
answers every request (that `only` allows) 503 SlowDown, a permanent outage, until set back;
`refuse()` stops listening and drops open connections (connections refused).

Seeding: each request's draw is a `random.Random` seeded by `seed` and the request itself (method,
path, how many such requests came before; see `_choose`), so a run meets the same faults again
whatever the order in which its processes send their requests.

Connections are kept alive as S3 keeps them (`keep_alive=False`: one request per connection).
aiohttp re-sends an idempotent request (GET, HEAD, PUT) once by itself when its connection drops
before the response starts, so a reset during the headers is often survived there, below
botocore, without reaching our retry handlers or their logs.

The server runs in daemon threads of the calling process: a test, or a benchmark that puts
tests/ on `sys.path`, starts one around any command it runs.
"""

from __future__ import annotations

import collections
import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http.client import HTTPResponse

DEFAULT_KINDS = {"500": 1.0, "503": 1.0, "reset": 1.0, "truncate": 1.0, "latency": 1.0}
#: Kinds that fail the request (latency delays it only).
FAILURES = ("500", "503", "reset", "truncate", "corrupt", "outage")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}

_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
    "</Message><Resource>{path}</Resource><RequestId>FAULTPROXY{n:08d}</RequestId></Error>"
)
_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


def _draw(seed: int, key: tuple, count: int, rate: float, kinds: dict[str, float]) -> str | None:
    """The fault drawn for the `count`-th request of `key` (method, path, query names), or None."""
    draw = random.Random(f"{seed}|{key}|{count}")
    if draw.random() >= rate:
        return None
    names = sorted(kinds)
    kind = draw.choices(names, [kinds[n] for n in names])[0]
    return None if kind == "corrupt" and key[0] != "GET" else kind


def seed_failing_first(
    method: str, path: str, rate: float, wanted: tuple[str, ...] = ("500", "503")
) -> int:
    """A seed under which the first `method` request of `path` (no query) meets one of the
    `wanted` faults at `rate` with the default kinds, the rest drawn as usual: for a test that
    must see a given request fail (a driver's, whose retry its output shows) whatever the
    random names in its paths."""
    key = (method, path, ())
    return next(s for s in range(100_000) if _draw(s, key, 0, rate, DEFAULT_KINDS) in wanted)


class FaultProxy:
    """A seeded fault-injecting HTTP proxy in front of `upstream` (`http://127.0.0.1:PORT`)."""

    def __init__(
        self,
        upstream: str,
        rate: float = 0.1,
        seed: int = 0,
        kinds: dict[str, float] | None = None,
        latency: float = 0.05,
        only: Callable[[str, str], bool] | None = None,
        limit: int | None = None,
        keep_alive: bool = True,
    ):
        host, port = upstream.removeprefix("http://").rstrip("/").rsplit(":", 1)
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError(f"the fault proxy forwards to 127.0.0.1 only, not {host}")
        self.upstream = ("127.0.0.1", int(port))
        self.rate = rate
        self.kinds = dict(kinds or DEFAULT_KINDS)
        self.latency = latency
        self.only = only
        self.limit = limit
        self.keep_alive = keep_alive
        self.outage = False
        self.seed = seed
        self._seen: collections.Counter[tuple] = collections.Counter()
        self.requests = 0
        self.injected: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[str, str, str]] = []  # (method, path, kind or "ok")
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        self._clients: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ control
    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):  # wakes the accepting thread: no connection after this
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()

    def refuse(self) -> None:
        """Stop listening and drop open connections: every request is refused (the endpoint is
        gone)."""
        self.close()
        with self._lock:
            clients, self._clients = list(self._clients), set()
        for client in clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

    @property
    def failures(self) -> int:
        """Requests failed (every kind but latency)."""
        return sum(n for kind, n in self.injected.items() if kind in FAILURES)

    def summary(self) -> str:
        """ "61 requests, 8 failed (503 3, reset 3, truncate 2), 1 delayed"."""
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.injected.items()) if k in FAILURES)
        delayed = self.injected.get("latency", 0)
        return f"{self.requests} requests, {self.failures} failed ({kinds or 'none'}), {delayed} delayed"

    # ------------------------------------------------------------------ serving
    def _serve(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._clients.add(client)
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def _choose(self, method: str, path: str) -> str | None:
        """The fault for this request, or None. The draw is seeded by (seed, method, the path
        without its query's values, how many such requests came before): the same run meets
        the same faults whatever the order in which concurrent processes send their requests."""
        with self._lock:
            self.requests += 1
            eligible = self.only is None or self.only(method, path)
            base, _, query = path.partition("?")
            key = (method, base, tuple(sorted(p.split("=")[0] for p in query.split("&") if p)))
            count = self._seen[key]
            self._seen[key] += 1
            kind = None
            if self.outage and eligible:
                kind = "outage"
            elif not eligible or (self.limit is not None and self.failures >= self.limit):
                kind = None
            else:
                kind = _draw(self.seed, key, count, self.rate, self.kinds)
            if kind:
                self.injected[kind] += 1
            self.log.append((method, path, kind or "ok"))
            return kind

    def _connection(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        try:
            while True:
                request = _read_request(reader, client)
                if request is None:
                    return
                method, path, head, body = request
                kind = self._choose(method, path)
                if kind in ("500", "503", "outage"):
                    status = 500 if kind == "500" else 503
                    client.sendall(
                        _error_response(status, path, self.requests, method, self.keep_alive)
                    )
                    if not self.keep_alive:
                        return
                    continue
                if kind == "latency":
                    time.sleep(self.latency)
                status_line, headers, payload = self._forward(method, head, body)
                response = _response_bytes(status_line, headers, payload, method, self.keep_alive)
                if kind == "reset":
                    cut = len(response) - len(payload) + len(payload) // 2
                    client.sendall(response[: cut if payload else len(response) // 2])
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if kind == "truncate":
                    cut = len(response) - len(payload) + len(payload) // 2
                    client.sendall(response[: cut if payload else len(response) // 2])
                    client.shutdown(socket.SHUT_RDWR)
                    return
                if kind == "corrupt" and payload:
                    headers = [
                        (k, v) for k, v in headers if not k.lower().startswith("x-amz-checksum")
                    ]
                    payload = (
                        payload[: len(payload) // 2]
                        + bytes([payload[len(payload) // 2] ^ 0xFF])
                        + payload[len(payload) // 2 + 1 :]
                    )
                    response = _response_bytes(
                        status_line, headers, payload, method, self.keep_alive
                    )
                client.sendall(response)
                if not self.keep_alive:
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._clients.discard(client)
            reader.close()
            client.close()

    def _forward(self, method: str, head: bytes, body: bytes) -> tuple[bytes, list, bytes]:
        """Send the request upstream on a fresh connection; its status line, headers and body."""
        with socket.create_connection(self.upstream, timeout=60) as upstream:
            upstream.sendall(head + body)
            response = HTTPResponse(upstream, method=method)
            response.begin()
            payload = response.read()
            status_line = f"HTTP/1.1 {response.status} {response.reason}".encode()
            return status_line, response.getheaders(), payload


def _read_request(reader, client: socket.socket) -> tuple[str, str, bytes, bytes] | None:
    """One request off a client connection: method, path, head (with `Connection: close` for
    the upstream) and raw body (chunked bodies kept chunked). None at the end of the stream.
    `Expect: 100-continue` (botocore's uploads) is answered here, before the body is read."""
    line = reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    lines = []
    length, chunked, expect = 0, False, False
    while True:
        header = reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        lowered = name.strip().lower()
        if lowered == "content-length":
            length = int(value.strip())
        if lowered == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        if lowered == "expect" and "100-continue" in value.lower():
            expect = True
            continue
        if lowered in ("connection", "keep-alive"):
            continue
        lines.append(header)
    if expect:
        client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if chunked:
        body = b""
        while True:
            size_line = reader.readline()
            body += size_line
            size = int(size_line.split(b";")[0].strip(), 16)
            body += reader.read(size + 2)
            if size == 0:
                # trailers until an empty line
                while True:
                    trailer = reader.readline()
                    if trailer in (b"\r\n", b"\n", b""):
                        break
                    body = body[:-2] + trailer + b"\r\n"
                break
    else:
        body = reader.read(length) if length else b""
    head = line + b"".join(lines) + b"Connection: close\r\n\r\n"
    return method, path, head, body


def _error_response(status: int, path: str, n: int, method: str, keep_alive: bool) -> bytes:
    """S3's error response: the XML body botocore parses into its code (none for HEAD)."""
    code, message = _ERRORS[status]
    body = _XML.format(code=code, message=message, path=path, n=n).encode()
    reason = "Internal Server Error" if status == 500 else "Slow Down"
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/xml",
        f"Content-Length: {len(body)}",
        f"Date: {formatdate(usegmt=True)}",
        "Server: fault-proxy",
        *([] if keep_alive else ["Connection: close"]),
    ]
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode() + (b"" if method == "HEAD" else body)


def _response_bytes(
    status_line: bytes, headers: list, payload: bytes, method: str, keep_alive: bool
) -> bytes:
    """The upstream response re-framed with a Content-Length (HEAD keeps the upstream's)."""
    lines = [status_line]
    for name, value in headers:
        if name.lower() in _HOP_BY_HOP and not (
            method == "HEAD" and name.lower() == "content-length"
        ):
            continue
        lines.append(f"{name}: {value}".encode("latin-1"))
    if method != "HEAD":
        lines.append(f"Content-Length: {len(payload)}".encode())
    if not keep_alive:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if method == "HEAD" else payload)

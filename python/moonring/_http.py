"""HTTP/1.1 to one rank service: keep-alive connections (TCP or a Unix socket), a small pool so
async ops may run concurrently, bearer token, typed errors. Standard library sockets only: a
request is one sendall (head and small body together), the answer's head is parsed by hand and
its body read straight into the caller's memory (http.client's email-based header parsing cost
more than the service's own work on a small collective)."""
from __future__ import annotations

import json
import socket
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import quote, urlsplit

from .errors import ServiceUnreachable, error_from_response

POOL_LIMIT = 16  # idle connections kept per service (concurrent async ops beyond it open more)
HEAD_LIMIT_BYTES = 64 * 1024  # an answer's status line and headers
COALESCE_BYTES = 64 * 1024  # bodies up to this size go out in the same send as the head
RECV_BYTES = 256 * 1024


class Response:
    """A 2xx answer: status, lower-cased headers, body bytes (or None when read into a target)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Dict[str, str], body: Optional[bytes]):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _Lost(Exception):
    """The connection ended; `sent_nothing`: before any answer byte arrived (safe to retry on a
    reused connection: the service closed it while idle)."""

    def __init__(self, why: str, answer_started: bool):
        super().__init__(why)
        self.answer_started = answer_started


def parse_address(url: str) -> Tuple[str, str, int, str]:
    """('tcp', host, port, url) or ('unix', path, 0, url) for http://host:port, unix:///path,
    unix:/path, or a bare filesystem path."""
    if url.startswith("/") or url.startswith("./"):
        return "unix", url, 0, f"unix://{url}"
    parts = urlsplit(url)
    if parts.scheme in ("unix", "http+unix"):
        path = parts.path if parts.netloc in ("", "localhost") else "/" + parts.netloc + parts.path
        return "unix", path, 0, f"unix://{path}"
    if parts.scheme not in ("http", ""):
        raise ValueError(f"unsupported URL {url!r}: use http://HOST:PORT or unix:///PATH")
    if not parts.hostname:
        raise ValueError(f"URL {url!r} has no host")
    port = parts.port or 80
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    return "tcp", host, port, f"http://{shown}:{port}"


class _Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, kind: str, host: str, port: int, connect_timeout: float):
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(connect_timeout)
            sock.connect(host)
        else:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
            # small request/answer pairs: Nagle + delayed ACK would add ~40 ms per call
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.buf = bytearray()  # received, not yet consumed
        self.open = True

    def close(self) -> None:
        self.open = False
        try:
            self.sock.close()
        except OSError:
            pass

    # -- reading ------------------------------------------------------------------------
    def _fill(self, started: bool) -> None:
        try:
            chunk = self.sock.recv(RECV_BYTES)
        except (ConnectionResetError, BrokenPipeError) as e:
            raise _Lost(str(e), started) from e
        if not chunk:
            raise _Lost("closed by the service", started)
        self.buf += chunk

    def read_head(self) -> Tuple[int, Dict[str, str]]:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buf) > HEAD_LIMIT_BYTES:
                raise _Lost("answer head over 64 KiB", True)
            self._fill(bool(self.buf))
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise _Lost(f"not an HTTP answer: {lines[0][:80]!r}", True)
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return int(parts[1]), headers

    def read_into(self, target: memoryview) -> None:
        """Exactly len(target) body bytes into target."""
        want = len(target)
        got = min(want, len(self.buf))
        target[:got] = self.buf[:got]
        del self.buf[:got]
        while got < want:
            try:
                n = self.sock.recv_into(target[got:], min(want - got, 16 << 20))
            except (ConnectionResetError, BrokenPipeError) as e:
                raise _Lost(str(e), True) from e
            if n == 0:
                raise _Lost(f"answer cut at {got} of {want} bytes", True)
            got += n

    def read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            while (i := self.buf.find(b"\r\n")) < 0:
                self._fill(True)
            size = int(bytes(self.buf[:i]).split(b";")[0].strip() or b"0", 16)
            del self.buf[:i + 2]
            while len(self.buf) < size + 2:
                self._fill(True)
            out += self.buf[:size]
            del self.buf[:size + 2]
            if size == 0:
                return bytes(out)

    def read_to_eof(self) -> bytes:
        while True:
            try:
                self._fill(True)
            except _Lost:
                data = bytes(self.buf)
                self.buf.clear()
                self.open = False
                return data


class HttpTransport:
    def __init__(self, url: str, token: Optional[str] = None, connect_timeout: float = 10.0):
        self.kind, self.host, self.port, self.url = parse_address(url)
        self.token = token
        self.connect_timeout = connect_timeout
        self._idle: List[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._host_header = self.url.split("//", 1)[1] if self.kind == "tcp" else "localhost"

    # -- connections --------------------------------------------------------------------
    def _take(self) -> Tuple[_Connection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        try:
            return _Connection(self.kind, self.host, self.port, self.connect_timeout), False
        except OSError as e:
            raise ServiceUnreachable(f"rank service {self.url} unreachable: {e}") from e

    def _give(self, conn: _Connection) -> None:
        with self._lock:
            if conn.open and not self._closed and len(self._idle) < POOL_LIMIT:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    # -- requests -----------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: Optional[Dict[str, str]] = None,
        params: Optional[Dict[str, Any]] = None,
        into: Optional[Callable[[Dict[str, str], int], memoryview]] = None,
        timeout: Optional[float] = None,
    ) -> Response:
        """Sends one request and returns the 2xx answer; raises the typed MoonringError
        otherwise. `into(headers, length) -> writable memoryview of `length` bytes`: an
        octet-stream answer's body is read straight into it (no intermediate bytes object).
        A reused keep-alive connection the service had closed is retried once on a fresh one
        (no answer byte had come: the service had closed it while idle)."""
        if params:
            path += ("&" if "?" in path else "?") + "&".join(
                f"{k}={quote(str(v), safe=',')}" for k, v in params.items() if v is not None)
        head = [f"{method} {path} HTTP/1.1", f"Host: {self._host_header}"]
        if self.token:
            head.append(f"Authorization: Bearer {self.token}")
        if isinstance(body, (dict, list)):
            body = json.dumps(body, separators=(",", ":")).encode()
            head.append("Content-Type: application/json")
        for k, v in (headers or {}).items():
            head.append(f"{k}: {v}")
        if body is None and method in ("POST", "PUT"):
            body = b""
        if body is not None:
            head.append(f"Content-Length: {memoryview(body).nbytes}")
        raw_head = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        for attempt in (0, 1):
            conn, reused = self._take()
            try:
                # a collective blocks until every rank arrives: no socket timeout beyond the
                # caller's (the service answers 504 at timeout_ms)
                conn.sock.settimeout(timeout)
                self._send(conn, raw_head, body)
                status, hdrs = conn.read_head()
                answer = self._finish(conn, method, status, hdrs, into)  # conn back in the pool
            except _Lost as e:
                conn.close()
                if reused and attempt == 0 and not e.answer_started:
                    continue
                raise ServiceUnreachable(f"rank service {self.url}: connection lost ({e})") from e
            except socket.timeout:
                conn.close()
                raise
            except OSError as e:
                conn.close()
                raise ServiceUnreachable(f"rank service {self.url}: {e}") from e
            except BaseException:
                conn.close()
                raise
            if answer.status >= 300:
                raise error_from_response(answer.status, answer.body or b"")
            return answer
        raise AssertionError("unreachable")

    @staticmethod
    def _send(conn: _Connection, raw_head: bytes, body: Any) -> None:
        try:
            if body is None or memoryview(body).nbytes == 0:
                conn.sock.sendall(raw_head)
            elif memoryview(body).nbytes <= COALESCE_BYTES:
                conn.sock.sendall(raw_head + bytes(body))
            else:
                conn.sock.sendall(raw_head)
                conn.sock.sendall(body)
        except (ConnectionResetError, BrokenPipeError) as e:
            raise _Lost(str(e), False) from e

    def _finish(self, conn: _Connection, method: str, status: int, headers: Dict[str, str], into: Any) -> Response:
        length = int(headers["content-length"]) if "content-length" in headers else -1
        data: Optional[bytes] = None
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            data = b""
        elif (into is not None and status < 300 and length >= 0
              and headers.get("content-type", "").startswith("application/octet-stream")):
            conn.read_into(into(headers, length))
        elif length >= 0:
            buf = bytearray(length)
            conn.read_into(memoryview(buf))
            data = bytes(buf)
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            data = conn.read_chunked()
        else:
            data = conn.read_to_eof()
        if headers.get("connection", "").lower() == "close":
            conn.close()
        self._give(conn)
        return Response(status, headers, data)

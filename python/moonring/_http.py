"""HTTP to one rank service: keep-alive connections (TCP or a Unix socket), a small pool so
async ops may run concurrently, bearer token, typed errors. Standard library only."""
from __future__ import annotations

import http.client
import json
import socket
import threading
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote, urlsplit

from .errors import ServiceUnreachable, error_from_response

POOL_LIMIT = 16  # idle connections kept per service (concurrent async ops beyond it open more)


class _TcpConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        # small request/answer pairs: Nagle + delayed ACK would add ~40 ms per call
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: Optional[float] = None):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class Response:
    """A 2xx answer: status, lower-cased headers, body bytes (or None when read into a target)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Dict[str, str], body: Optional[bytes]):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


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


class HttpTransport:
    def __init__(self, url: str, token: Optional[str] = None, connect_timeout: float = 10.0):
        self.kind, self.host, self.port, self.url = parse_address(url)
        self.token = token
        self.connect_timeout = connect_timeout
        self._idle: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- connections --------------------------------------------------------------------
    def _new(self) -> http.client.HTTPConnection:
        if self.kind == "unix":
            return _UnixConnection(self.host, timeout=self.connect_timeout)
        return _TcpConnection(self.host, self.port, timeout=self.connect_timeout)

    def _take(self) -> Tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._new(), False

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < POOL_LIMIT:
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
        into: Any = None,
        timeout: Optional[float] = None,
    ) -> Response:
        """Sends one request and returns the 2xx answer; raises the typed MoonringError
        otherwise. `into(headers, length) -> writable memoryview of `length` bytes`: an
        octet-stream answer's body is read straight into it (no intermediate bytes object).
        A reused keep-alive connection the service had closed is retried once on a fresh one
        (nothing was received by the service then)."""
        if params:
            path += ("&" if "?" in path else "?") + "&".join(
                f"{k}={quote(str(v), safe=',')}" for k, v in params.items() if v is not None)
        hdrs = {"Connection": "keep-alive"}
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body, separators=(",", ":")).encode()
            hdrs["Content-Type"] = "application/json"
        if headers:
            hdrs.update(headers)
        if body is None and method in ("POST", "PUT"):
            body = b""
        for attempt in (0, 1):
            conn, reused = self._take()
            try:
                # a collective blocks until every rank arrives: no socket timeout beyond the
                # caller's (the service answers 504 at timeout_ms)
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise ServiceUnreachable(f"rank service {self.url}: connection lost ({e})") from e
            except (ConnectionRefusedError, FileNotFoundError, socket.gaierror, OSError) as e:
                conn.close()
                if isinstance(e, socket.timeout):
                    raise
                raise ServiceUnreachable(f"rank service {self.url} unreachable: {e}") from e
            try:
                return self._finish(conn, resp, into)
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def _finish(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, into: Any) -> Response:
        headers = {k.lower(): v for k, v in resp.getheaders()}
        status = resp.status
        if status >= 300:
            raise error_from_response(status, resp.read())
        length = int(headers.get("content-length", "-1"))
        if into is not None and length >= 0 and headers.get("content-type", "").startswith("application/octet-stream"):
            target = into(headers, length)
            want = length
            got = 0
            while got < want:
                n = resp.readinto(target[got:])
                if not n:
                    raise ServiceUnreachable(f"rank service {self.url}: answer cut at {got} of {want} bytes")
                got += n
            resp.read()  # drain (nothing) so the connection can be reused
            self._give_or_close(conn, resp)
            return Response(status, headers, None)
        data = resp.read()
        self._give_or_close(conn, resp)
        return Response(status, headers, data)

    def _give_or_close(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        if resp.will_close:
            conn.close()
        else:
            self._give(conn)

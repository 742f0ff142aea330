"""The HTTP/1.1 transport against a scripted server: chunked and close-delimited answers, a
keep-alive connection the server closed while idle (retried once), an answer cut short."""
import socket
import threading

import pytest

from moonring._http import HttpTransport
from moonring.errors import CollectiveTimeout, ServiceUnreachable


ERR = b'{"error":{"code":"timeout","message":"late","missing_ranks":[2,3]}}'


class Scripted:
    """Accepts connections; answers request i with answers[i] (bytes), then acts: 'keep' leaves
    the connection open, 'close' closes it after the answer."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while self.answers:
            conn, _ = self.sock.accept()
            with conn:
                buf = b""
                while self.answers:
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
                    if b"\r\n\r\n" not in buf:
                        break
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0] or 0) \
                        if b"content-length" in head.lower() else 0
                    while len(rest) < n:
                        rest += conn.recv(65536)
                    self.requests.append(head.split(b"\r\n")[0].decode())
                    buf = rest[n:]
                    answer, then = self.answers.pop(0)
                    conn.sendall(answer)
                    if then == "close":
                        break


def test_chunked_close_delimited_and_stale_connection():
    srv = Scripted([
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n", "close"),  # chunked, then the server closes while idle
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", "keep"),  # the retry on a fresh connection
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[1,2]", "close"),  # delimited by close
        (b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: %d\r\n\r\n%s" % (len(ERR), ERR), "keep"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "close"),  # cut short
    ])
    t = HttpTransport(f"http://127.0.0.1:{srv.port}")
    t.connect_timeout = 5.0
    assert t.request("GET", "/one", timeout=10).json() == {"a": 1}
    assert t.request("POST", "/two", body={"x": 1}).json() == {}  # reused conn was closed: retried
    assert t.request("GET", "/three").json() == [1, 2]
    with pytest.raises(CollectiveTimeout) as e:
        t.request("GET", "/four")
    assert e.value.missing_ranks == [2, 3]
    with pytest.raises(ServiceUnreachable, match="cut"):
        t.request("GET", "/five")
    assert srv.requests == ["GET /one HTTP/1.1", "POST /two HTTP/1.1", "GET /three HTTP/1.1", "GET /four HTTP/1.1",
                            "GET /five HTTP/1.1"]
    t.close()


def test_refused_is_service_unreachable():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ServiceUnreachable, match="unreachable"):
        HttpTransport(f"http://127.0.0.1:{port}").request("GET", "/health")

"""Starts real rank services for the tests (`bun src/cli.ts launch`) and ends every process it
started. Also runs one function per rank in threads (numpy client) with a deadline."""
from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


def bun() -> str:
    local = os.path.join(REPO, ".tools", "bin", "bun")
    if os.path.exists(local):
        return local
    found = shutil.which("bun")
    if not found:
        raise RuntimeError("bun not found: run `npm run build` first")
    return found


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_base_port(count: int) -> int:
    """A base port with `count` consecutive free ports (launch puts rank r on base + r)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        if all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no run of free ports found")


class World:
    """`launch --nproc N` in the background; `urls[r]` is rank r's service."""

    def __init__(self, nproc: int, *, max_world_size: Optional[int] = None, args: Sequence[str] = (),
                 env: Optional[Dict[str, str]] = None):
        self.nproc = nproc
        slots = max_world_size or nproc
        self.base_port = free_base_port(slots)
        self.urls = [f"http://127.0.0.1:{self.base_port + r}" for r in range(slots)]
        cmd = [bun(), "src/cli.ts", "launch", "--nproc", str(nproc), "--port", str(self.base_port)]
        if max_world_size:
            cmd += ["--max-world-size", str(max_world_size)]
        cmd += list(args)
        # a per-world bearer token, as a real job has (clients get it as connect(token=...))
        self.token = (env or {}).get("MOONRING_TOKEN") or secrets.token_hex(16)
        self.env = {**os.environ, "MOONRING_LOG": os.environ.get("MOONRING_LOG", "warn"), **(env or {}),
                    "MOONRING_TOKEN": self.token}
        self.lines: List[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        self.extra: List[subprocess.Popen] = []
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            self.wait_for_lines(lambda ls: sum(" ready " in l for l in ls) >= nproc, READY_TIMEOUT_S, "ready")
        except BaseException:
            self.stop()
            raise

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_lines(self, pred: Callable[[List[str]], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not pred(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"launch: no {what} within {timeout_s:g} s (exit {self.proc.poll()}): {self.lines}")
                self._cond.wait(min(left, 0.5))

    def serve(self, rank: int, *, join: bool = True, world_size: Optional[int] = None) -> subprocess.Popen:
        """Starts one more rank (`serve --join`) in slot `rank`; ended by stop()."""
        cmd = [bun(), "src/cli.ts", "serve", "--rank", str(rank), "--world-size", str(world_size or self.nproc),
               "--master", f"127.0.0.1:{self.base_port}", "--port", str(self.base_port + rank)]
        if join:
            cmd.append("--join")
        if world_size is None and len(self.urls) != self.nproc:
            cmd += ["--max-world-size", str(len(self.urls))]
        p = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True)
        self.extra.append(p)
        return p

    def stop(self) -> None:
        for p in [*self.extra, self.proc]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in [*self.extra, self.proc]:
            try:
                p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def connect(self, rank: int, **kw: Any) -> Any:
        import moonring

        return moonring.connect(self.urls[rank], token=self.token, **kw)

    def __enter__(self) -> "World":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def per_rank(fns: Sequence[Callable[[], Any]], timeout_s: float = 120.0) -> List[Any]:
    """Runs fns[r]() in one thread each; returns the results; re-raises the first error."""
    results: List[Any] = [None] * len(fns)
    errors: List[Optional[BaseException]] = [None] * len(fns)

    def run(i: int) -> None:
        try:
            results[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(fns))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"ranks {[i for i, t in enumerate(threads) if t.is_alive()]} did not finish in {timeout_s:g} s")
    for e in errors:
        if e is not None:
            raise e
    return results

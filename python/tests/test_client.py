"""connect() (env, URL, token), typed errors carrying the REST error, elastic membership
(a rank killed, survivors go on, a replacement joins), and `pip install python/`."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import moonring
from launcher import REPO, World, per_rank


def wait_until(pred, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.05)


def test_connect_from_torchrun_env(world, monkeypatch):
    for k in ("MOONRING_URL", "MOONRING_UNIX", "MOONRING_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MOONRING_TOKEN", world.token)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("MOONRING_BASE_PORT", str(world.base_port))
    with moonring.connect() as c:
        assert (c.rank, c.world_size, c.url) == (2, 3, world.urls[2])
    monkeypatch.setenv("MOONRING_PORT", str(world.base_port + 1))  # serve's own variable wins
    with moonring.connect() as c:
        assert c.rank == 1
    monkeypatch.setenv("MOONRING_URL", world.urls[0])
    with moonring.connect() as c:
        assert c.rank == 0
    monkeypatch.delenv("MOONRING_URL")
    monkeypatch.delenv("MOONRING_PORT")
    with moonring.connect(rank=1) as c:  # an explicit rank beats RANK
        assert c.rank == 1


def test_connect_without_service_names_it(monkeypatch):
    from launcher import free_base_port

    port = free_base_port(1)
    with pytest.raises(moonring.NotReady, match=f"127.0.0.1:{port}"):
        moonring.connect(f"http://127.0.0.1:{port}", wait=0.3)
    for k in ("MOONRING_URL", "MOONRING_UNIX", "MOONRING_PORT", "RANK"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match="RANK"):
        moonring.connect()


def test_mismatch_names_ranks(clients):
    shapes = [(4,), (5,), (4,)]
    errs = per_rank([lambda c=c, s=s: _error(lambda: c.all_reduce(np.zeros(s, np.float32), timeout=10)) for c, s in zip(clients, shapes)])
    for e in errs:
        assert isinstance(e, moonring.CollectiveMismatch), e
        assert e.status == 409 and e.code == "collective_mismatch"
        assert sorted(e.ranks) == [0, 1, 2] and "rank 1" in e.message
    # the group is not wedged: the next call of every rank is a new collective
    got = per_rank([lambda c=c: c.all_reduce(np.ones(2)) for c in clients])
    assert all(g.tolist() == [3.0, 3.0] for g in got)


def test_timeout_names_missing_ranks(clients):
    errs = per_rank([lambda c=c: _error(lambda: c.all_reduce(np.ones(3), timeout=1.0)) for c in clients[:2]])
    for e in errs:
        assert isinstance(e, moonring.CollectiveTimeout) and isinstance(e, TimeoutError)
        assert e.status == 504 and e.missing_ranks == [2] and sorted(e.joined_ranks) == [0, 1]
    got = per_rank([lambda c=c: c.all_reduce(np.full(1, c.rank)) for c in clients])
    assert all(int(g[0]) == 3 for g in got)


def test_bad_input_is_invalid_request(clients):
    c = clients[0]
    with pytest.raises(moonring.InvalidRequest, match="avg") as e:
        c.all_reduce(np.ones(3, np.int32), op="avg")
    assert e.value.status == 400 and e.value.code == "invalid_request"
    with pytest.raises(moonring.InvalidRequest, match="out of range"):
        c.reduce(np.ones(2), dst=3)
    with pytest.raises(moonring.InvalidRequest, match="bitwise|band|float"):
        c.all_reduce(np.ones(2, np.float32), op="band")
    with pytest.raises(TypeError, match="complex128"):
        c.all_reduce(np.ones(2, np.complex128))
    with pytest.raises(moonring.InvalidRequest, match="premul"):
        c.all_reduce(np.ones(2), op="premul_sum")
    # the rank is still fine
    assert per_rank([lambda c=c: c.barrier() for c in clients]) == [None] * 3


def _error(fn):
    try:
        fn()
    except moonring.MoonringError as e:
        return e
    raise AssertionError("no error raised")


def test_token_is_sent_from_env(monkeypatch):
    with World(2, env={"MOONRING_TOKEN": "s3cret"}) as w:
        monkeypatch.setenv("MOONRING_TOKEN", "s3cret")
        cs = [moonring.connect(u) for u in w.urls]
        got = per_rank([lambda c=c: c.all_reduce(np.arange(3)) for c in cs])
        assert got[0].tolist() == [0, 2, 4]
        monkeypatch.setenv("MOONRING_TOKEN", "wrong")
        with pytest.raises(moonring.Unauthorized) as e:  # /health tells strangers readiness only
            moonring.connect(w.urls[0])
        assert e.value.status == 401
        with pytest.raises(moonring.Unauthorized) as e:  # and every call is refused
            cs[0]._transport.token = "wrong"
            cs[0].all_reduce(np.ones(1))
        assert e.value.status == 401 and e.value.code == "unauthorized"
        for c in cs:
            c.close()


def test_elastic_kill_rejoin():
    """A rank's process is killed: the survivors' calls complete among them and say who
    contributed; a replacement joins the slot (serve --join), is activated, and takes part."""
    with World(3) as w:
        cs = [w.connect(r) for r in range(3)]
        x = [np.full(4, 10.0 ** r) for r in range(3)]
        got = per_rank([lambda c=c, v=v: c.all_reduce(v) for c, v in zip(cs, x)])
        assert got[0].tolist() == [111.0] * 4
        os.kill(cs[2].health()["pid"], signal.SIGKILL)
        wait_until(lambda: cs[0].cluster()["active_ranks"] == [1, 1, 0], what="rank 2 removed")
        got = per_rank([lambda c=c, v=v: c.all_reduce(v) for c, v in zip(cs[:2], x[:2])])
        assert got[0].tolist() == [11.0] * 4 and got[1].tolist() == [11.0] * 4
        assert cs[0].last_op.contributors == [0, 1] and cs[0].last_op.active_ranks == [1, 1, 0]
        assert cs[0].active_ranks() == [0, 1]
        gathered = per_rank([lambda c=c: c.all_gather(np.array([c.rank])) for c in cs[:2]])
        assert gathered[0][2] is None and [int(a[0]) for a in gathered[0][:2]] == [0, 1]
        w.serve(2, join=True)
        wait_until(lambda: any(r["rank"] == 2 and r["state"] == "awaiting" for r in cs[0].cluster()["ranks"]),
                   timeout_s=60, what="replacement awaiting")
        assert cs[1].activate([2])["active_ranks"] == [1, 1, 1]
        cs[2].close()
        cs[2] = w.connect(2)
        got = per_rank([lambda c=c, v=v: c.all_reduce(v) for c, v in zip(cs, x)])
        assert all(g.tolist() == [111.0] * 4 for g in got)
        assert cs[2].last_op.contributors == [0, 1, 2]
        for c in cs:
            c.close()


def test_pip_install(tmp_path):
    """`pip install python/` gives an importable package (no network: no build isolation)."""
    target = tmp_path / "site"
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(os.path.join(REPO, "python"), src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(src)],
                   check=True, cwd=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", "import moonring, moonring.shm; print(moonring.__file__)"],
                         env={**os.environ, "PYTHONPATH": str(target)}, cwd=str(tmp_path),
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().startswith(str(target))


def test_unix_socket(tmp_path, monkeypatch):
    """launch --unix PATH: rank r also serves on PATH.r; connect() takes the path (or
    MOONRING_UNIX with RANK) and reuses one keep-alive connection."""
    path = str(tmp_path / "mr.sock")
    with World(2, args=["--unix", path]) as w:
        cs = [moonring.connect(unix_socket=path, rank=r, token=w.token) for r in range(2)]
        assert [c.rank for c in cs] == [0, 1] and cs[1].url == f"unix://{path}.1"
        got = per_rank([lambda c=c: c.all_reduce(np.arange(4) * (c.rank + 1)) for c in cs])
        assert got[1].tolist() == [0, 3, 6, 9]
        for _ in range(3):
            per_rank([lambda c=c: c.barrier() for c in cs])
        assert len(cs[0]._transport._idle) == 1  # one connection, reused
        for k in ("MOONRING_URL", "MOONRING_PORT"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("MOONRING_UNIX", path)
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("MOONRING_TOKEN", w.token)
        with moonring.connect() as c:
            assert c.rank == 1 and c.url.startswith("unix://")
        for c in cs:
            c.close()

"""Runs a torch.distributed script as N processes with the torchrun variables (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK) and, for moonring, the rank services'
MOONRING_BASE_PORT and token. Every process started is ended."""
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

from launcher import free_base_port

PACKAGE = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def run_ranks(script: str, args: List[str], world_size: int, results_dir: str, *, env: Optional[Dict[str, str]] = None,
              timeout_s: float = 600.0, expect_results: Optional[List[int]] = None) -> List[dict]:
    """Runs the ranks; returns each rank's $RESULTS_DIR/rank<r>.json (of `expect_results` ranks
    only, when given: the others may die on purpose)."""
    store_port = free_base_port(1)
    procs = []
    for r in range(world_size):
        e = {**os.environ, **(env or {}), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world_size),
             "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store_port),
             "RESULTS_DIR": results_dir, "PYTHONPATH": PACKAGE + os.pathsep + os.environ.get("PYTHONPATH", ""),
             "OMP_NUM_THREADS": "1"}
        log = open(os.path.join(results_dir, f"rank{r}.log"), "w")
        procs.append((subprocess.Popen([sys.executable, script, *args], env=e, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True), log))
    deadline = time.monotonic() + timeout_s
    try:
        for p, _ in procs:
            p.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    rows = []
    for r, (p, _) in enumerate(procs):
        if expect_results is not None and r not in expect_results:
            continue
        path = os.path.join(results_dir, f"rank{r}.json")
        if p.returncode != 0 or not os.path.exists(path):
            with open(os.path.join(results_dir, f"rank{r}.log")) as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"rank {r} of {script} {args} exited with {p.returncode}:\n{tail}")
        with open(path) as f:
            rows.append(json.load(f))
    return rows

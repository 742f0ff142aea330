"""The elastic-membership semantics of the Mooncake PG tests, on moonring: the last rank's
process and its rank service die mid-job; the survivors' dist.all_reduce completes among them
and moonring.torch tells who contributed and which ranks are active."""
import datetime
import json
import os
import signal
import time

import torch
import torch.distributed as dist

import moonring.torch


def main():
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    last = world - 1
    dist.init_process_group("moonring", timeout=datetime.timedelta(seconds=60))
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    before = t.item()
    dist.barrier()
    client = moonring.torch.get_client()
    if rank == last:
        os.kill(client.health()["pid"], signal.SIGKILL)  # this rank's service dies, then the program
        os._exit(0)
    deadline = time.monotonic() + 30
    while client.cluster()["active_ranks"][last] != 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the dead rank was not removed within 30 s")
        time.sleep(0.05)
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    info = moonring.torch.last_op()
    g = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(g, torch.tensor([rank * 10.0]))
    result = {"before": before, "after": t.item(), "contributors": info.contributors,
              "active": moonring.torch.active_ranks(), "gathered": [x.item() for x in g]}
    dist.destroy_process_group()
    with open(os.path.join(os.environ["RESULTS_DIR"], f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()

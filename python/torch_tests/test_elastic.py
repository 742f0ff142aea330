"""Elastic membership through the torch backend (gloo has no counterpart): a rank dies, the
survivors' collectives complete among them, contributors / active ranks say so."""
import json
import os

from launcher import World
from runner import run_ranks

SCRIPT = os.path.join(os.path.dirname(__file__), "elastic_script.py")


def test_survivors_go_on_after_a_rank_dies(tmp_path):
    with World(4) as w:
        run_ranks(SCRIPT, [], 4, str(tmp_path), env={"MOONRING_BASE_PORT": str(w.base_port), "MOONRING_TOKEN": w.token},
                  expect_results=[0, 1, 2])
    for r in range(3):
        res = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert res["before"] == 10.0
        assert res["after"] == 6.0  # 1 + 2 + 3: exactly the survivors
        assert res["contributors"] == [0, 1, 2] and res["active"] == [0, 1, 2]
        assert res["gathered"][:3] == [0.0, 10.0, 20.0] and res["gathered"][3] == 0.0  # the dead slot left as given

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # launcher
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))  # the moonring package

from launcher import World  # noqa: E402

WORLD_SIZE = 3  # roots 0 and last differ, and not a power of two


@pytest.fixture(scope="session")
def world():
    with World(WORLD_SIZE) as w:
        yield w


@pytest.fixture(scope="session")
def clients(world):
    cs = [world.connect(r) for r in range(len(world.urls))]
    yield cs
    for c in cs:
        c.close()

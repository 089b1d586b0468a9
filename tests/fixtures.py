"""pytest fixtures shared by the end-to-end suites (each suite's conftest imports them)."""
import os

import numpy as np
import pytest

from server import REFERENCE, Server


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    code = s.stop()
    assert code == 0, s.logs()


@pytest.fixture(scope="session")
def reference():
    return {name: np.load(os.path.join(REFERENCE, f"{name}.npz")) for name in ("mlp", "mixed", "strings")}


def mlp_numpy(ref, x):
    """The MLP computed with numpy from its committed weights: the independent reference."""
    return np.maximum(x @ ref["w1"] + ref["b1"], 0) @ ref["w2"] + ref["b2"]

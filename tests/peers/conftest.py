import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fixtures import mlp_numpy, reference, server  # noqa: E402,F401  (fixtures used by the tests)

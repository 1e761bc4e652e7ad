import sys
from pathlib import Path

import pytest
import torch

# Test helpers (the naive reference DLRM, the naive Criteo parser, sample rows) are plain
# modules beside the tests; with --import-mode=importlib they need their folders on sys.path.
HERE = Path(__file__).parent
for folder in (HERE, HERE / "data"):
    sys.path.insert(0, str(folder))


@pytest.fixture
def one_thread():
    """One intra-op thread for a training test: on a loaded 2-core machine two threads were
    10x slower. The previous setting is restored afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

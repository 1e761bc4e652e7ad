import sys
from pathlib import Path

# Test helpers (the naive reference DLRM, the naive Criteo parser, sample rows) are plain
# modules beside the tests; with --import-mode=importlib they need their folders on sys.path.
HERE = Path(__file__).parent
for folder in (HERE, HERE / "data"):
    sys.path.insert(0, str(folder))

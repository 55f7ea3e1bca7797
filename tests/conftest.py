import os
import sys
from pathlib import Path

# Single-threaded BLAS: small matrices (cell filters, 3x3 algebra) get much slower with a
# multithreaded OpenBLAS on a busy 2-core machine, and torch sets its own threads below.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Idle OpenMP threads sleep instead of spinning: on a shared machine spinning threads made the
# suite 10-30x slower (benchmarks/README.md). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

# make tests/eqv2_reference.py importable as a helper module
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))


import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402


@pytest.fixture
def runner() -> CliRunner:
    """A click test runner that keeps stderr apart from stdout (error lines go to stderr)."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 keeps stderr apart by default
        return CliRunner()

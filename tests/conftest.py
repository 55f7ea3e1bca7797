import sys
from pathlib import Path

import torch

# make tests/eqv2_reference.py importable as a helper module
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))

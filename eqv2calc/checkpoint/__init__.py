"""Loading (and writing) EquiformerV2 checkpoints in the layouts FAIR Chemistry released.

>>> loaded = load_checkpoint("eq2_31M_ec4_allmd.pt")
>>> loaded.model            # EquiformerV2Potential, eval mode
>>> loaded.graph_settings   # cutoff (Å), max_neighbors, strict cap
"""

from eqv2calc.checkpoint.load import LoadedModel, load_checkpoint
from eqv2calc.checkpoint.reader import CheckpointError
from eqv2calc.checkpoint.write import save_checkpoint

__all__ = ["CheckpointError", "LoadedModel", "load_checkpoint", "save_checkpoint"]

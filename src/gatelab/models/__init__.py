"""gatelab.models: decoder LMs assembled from typed configs and registry parts."""
from . import layers  # noqa: F401  (registers norms and dense FFNs)
from .config import BlockConfig, ModelConfig
from .lm import LM, Block, LMOutput, sample_next

__all__ = ["LM", "Block", "BlockConfig", "LMOutput", "ModelConfig", "sample_next"]

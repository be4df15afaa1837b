"""gatelab.depth: adaptive depth — layer-skip gates, mixture-of-depths and baselines (issue 6).

A depth method (registry kind "depth", selected by `ModelConfig.depth`) decides per block
and token whether the block runs; skipped tokens are not computed (gather / scatter), so
the compute meter and wall-clock follow the executed work.
"""
from .accounting import compute_saved, full_flops
from .base import BlockLike, Dense, DepthMethod, build_depth
from .baselines import RandomSkip, StaticLayerDrop
from .gateskip import GateSkip
from .mod import MixtureOfDepths, RoutedLayersConfig
from .routed import capacity_tokens, keep_mask, run_selected, run_selected_loop, topk_tokens

__all__ = [
    "BlockLike", "Dense", "DepthMethod", "GateSkip", "MixtureOfDepths", "RandomSkip", "RoutedLayersConfig",
    "StaticLayerDrop", "build_depth", "capacity_tokens", "compute_saved", "full_flops", "keep_mask",
    "run_selected", "run_selected_loop", "topk_tokens",
]

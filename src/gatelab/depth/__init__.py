"""gatelab.depth: adaptive depth — layer-skip gates, mixture-of-depths, early exit and baselines (issue 6).

A depth method (registry kind "depth", selected by `ModelConfig.depth`) decides per block
and token whether the block runs; skipped tokens are not computed (gather / scatter), so
the compute meter and wall-clock follow the executed work. Methods: "none" (dense),
"gateskip", "mod", "skip_middle", "calm" (confidence early exit), "learned_exit"
(JEI-DNN-style gates); baselines "random_skip", "layer_drop".
"""
from .accounting import compute_saved, decode_saved, decode_stepwise, dense_depth, full_flops
from .base import BlockLike, Dense, DepthMethod, build_depth
from .baselines import RandomSkip, StaticLayerDrop
from .early_exit import EarlyExit
from .gateskip import GateSkip
from .learned_exit import LearnedExit
from .mod import MixtureOfDepths, RoutedLayersConfig
from .routed import capacity_tokens, keep_mask, run_selected, run_selected_loop, topk_tokens
from .skip_middle import SkipMiddle

__all__ = [
    "BlockLike", "Dense", "DepthMethod", "EarlyExit", "GateSkip", "LearnedExit", "MixtureOfDepths", "RandomSkip",
    "RoutedLayersConfig", "SkipMiddle", "StaticLayerDrop", "build_depth", "capacity_tokens", "compute_saved",
    "decode_saved", "decode_stepwise", "dense_depth", "full_flops", "keep_mask", "run_selected",
    "run_selected_loop", "topk_tokens",
]

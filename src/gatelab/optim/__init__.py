"""gatelab.optim: adaptive optimizers and learning-rate schedules.

Every module in this package registers its optimizers (registry kind "optimizer") and
schedules (kind "schedule"); importing the package imports them all.
"""
import importlib
import pkgutil

import torch

from ..core.registry import register

# torch's own optimizers, available by name in configs.
register("optimizer", "adamw")(torch.optim.AdamW)
register("optimizer", "adam")(torch.optim.Adam)
register("optimizer", "sgd")(torch.optim.SGD)

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

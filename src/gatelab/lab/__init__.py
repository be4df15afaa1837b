"""gatelab.lab: running many runs and turning them into tables and reports.

Names are imported on first use, so a sweep worker that only needs `gatelab.lab.sweep`
does not pay for the report's plotting or the statistics' scipy at start-up.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "compare": ["Experiment", "load_experiment", "resolve_variants", "results_table", "run_compare"],
    "runs": ["RunIndex", "compare_runs", "compare_table", "parse_filters", "read_run", "sweep_best_over",
             "write_run"],
    "sweep": ["RunSpec", "SweepSpec", "expand", "load_sweep", "run_sweep", "summarize"],
    "report": ["make_report"],
    "claims": ["run_claims"],
    "stats": ["best_over", "confidence_interval", "mean_std", "welch_test"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'gatelab.lab' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)

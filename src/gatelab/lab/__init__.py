"""gatelab.lab: running many runs and turning them into tables and reports."""
from .compare import Experiment, load_experiment, resolve_variants, results_table, run_compare
from .report import make_report
from .runs import RunIndex, compare_runs, compare_table, parse_filters, read_run, sweep_best_over, write_run
from .sweep import RunSpec, SweepSpec, expand, load_sweep, run_sweep, summarize
from .claims import run_claims
from .stats import best_over, confidence_interval, mean_std, welch_test

__all__ = ["Experiment", "load_experiment", "resolve_variants", "results_table", "run_compare",
           "RunIndex", "compare_runs", "compare_table", "parse_filters", "read_run", "sweep_best_over", "write_run",
           "RunSpec", "SweepSpec", "expand", "load_sweep", "run_sweep", "summarize", "make_report",
           "run_claims", "best_over", "confidence_interval", "mean_std", "welch_test"]

"""gatelab.lab: running many runs and turning them into tables and reports."""
from .compare import Experiment, load_experiment, resolve_variants, results_table, run_compare

__all__ = ["Experiment", "load_experiment", "resolve_variants", "results_table", "run_compare"]

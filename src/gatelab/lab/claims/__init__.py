"""gatelab.lab.claims: small-scale reproductions of the published claims (METHODS.md §8).

Each claim is a sweep on a fixed tiny budget (`budget`) plus an `evaluate(records)` that
returns findings with a verdict and a one-sided p-value; `run_claims` trains, evaluates and
writes ``claims.md`` / ``claims.json``. One module per claim family registers its claims.
"""
from . import attention, depth, moe, optim, quant  # noqa: F401  (register the claims)
from .base import Claim, ClaimResult, Finding, compare, threshold
from .runner import available, results_table, run_claim, run_claims, select, spec_for, write_report

__all__ = ["Claim", "ClaimResult", "Finding", "available", "compare", "results_table", "run_claim", "run_claims",
           "select", "spec_for", "threshold", "write_report"]

"""gatelab.depth: adaptive depth — layer-skip gates, mixture-of-depths, early exit (issue 6)."""

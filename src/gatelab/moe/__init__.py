"""gatelab.moe: mixture-of-experts layer = router + dispatcher + experts (issue 4)."""

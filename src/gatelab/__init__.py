"""gatelab: adaptive gating and conditional computation — building blocks and a lab."""
__version__ = "0.1.0"

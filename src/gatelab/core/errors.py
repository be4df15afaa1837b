"""Exception types. Every error gatelab raises on bad input is one of these, with a
one-line message that names the problem and the fix."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class GatelabError(Exception):
    """Base class for gatelab's user-facing errors."""


class ConfigError(GatelabError, ValueError):
    """A configuration key, type or value is wrong."""


class DataError(GatelabError, ValueError):
    """Input data is missing, empty, undecodable or too small for the request."""


class CheckpointError(GatelabError, RuntimeError):
    """A checkpoint is missing, corrupt, or incompatible with the config."""


class NonFiniteLossError(GatelabError, FloatingPointError):
    """Training produced a NaN/inf loss."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""

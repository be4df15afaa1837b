"""Where a run came from: gatelab's git revision, library versions, the hardware.

Recorded in every sweep run's ``run.json`` so that a number can be traced to the code and
machine that produced it. Nothing here fails: what cannot be found is reported as None.
"""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy
import torch

import gatelab

_PACKAGE_DIR = Path(gatelab.__file__).resolve().parent


def git_revision(path: str | Path = _PACKAGE_DIR) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding gatelab's own source
    (uncommitted or untracked changes make it dirty); both None when gatelab is not running
    from a git checkout (e.g. installed from a wheel) or git is missing."""
    if _git(path, "ls-files", "--error-unmatch", "__init__.py") is None:
        return {"commit": None, "dirty": None}
    commit = _git(path, "rev-parse", "HEAD")
    status = _git(path, "status", "--porcelain")
    return {"commit": commit.strip() if commit else None,
            "dirty": None if status is None else bool(status.strip())}


def _git(path: str | Path, *args: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def library_versions() -> dict[str, str]:
    return {"gatelab": gatelab.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "numpy": numpy.__version__}


def machine_description() -> str:
    """The accelerator (or CPU model and thread count), torch and Python versions, in one line."""
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    else:
        dev = f"CPU {_cpu_model()} ({torch.get_num_threads()} threads)"
    return f"{dev}, torch {torch.__version__}, Python {platform.python_version()}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

"""What a model was made from: the code's git commit (the feature code's hash is
`features.FEATURE_CODE_HASH`)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__all__ = ["git_commit"]

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def git_commit() -> str:
    """The checkout's HEAD commit, `+dirty` when tracked files differ from it; `unknown` outside
    a git checkout (an installed package) or without git."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head

"""Where edgeprune keeps what it can rebuild: built engines, latency calibrations, tune scores, demo files."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "EDGEPRUNE_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """``$EDGEPRUNE_CACHE_DIR/parts...`` if set, else the platform's user cache folder for edgeprune
    (``$XDG_CACHE_HOME/edgeprune``, by default ``~/.cache/edgeprune`` on Linux). Nothing is created."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        from platformdirs import user_cache_dir  # a base dependency; imported here as most runs need no cache

        root = user_cache_dir("edgeprune", appauthor=False)
    return Path(root).expanduser().joinpath(*parts)

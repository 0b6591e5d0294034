"""Where the embedded local mode keeps its status store, queue, results and Gaia cache."""

from __future__ import annotations

import os
from pathlib import Path


def local_home() -> Path:
    """The embedded local mode's folder: ``$RAY_APP_HOME``, else ``$XDG_DATA_HOME/ray-app``
    (``~/.local/share/ray-app``), made absolute.

    It never depends on the current directory, so a job started by ``ray job submit`` (which
    runs in Ray's temporary working directory) and ``ray-app status`` in a shell see the same
    store.
    """
    home = os.environ.get("RAY_APP_HOME")
    if not home:
        data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        home = str(Path(data) / "ray-app")
    return Path(home).expanduser().resolve()

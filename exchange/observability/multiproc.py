"""Preparing prometheus-client's multiprocess folder, in a module that defines no metric.

``exchange serve --workers N`` must set the folder up before any metric exists in the
parent: defining a metric writes its file into the folder at once.
"""

from __future__ import annotations

import os
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(path: Path) -> None:
    """Create and empty ``path`` (stale files would add old counts) and export it.

    Call it in the parent before any worker starts: the workers inherit the environment
    and must import prometheus_client with the variable already set.
    """
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # only our files: the path may be shared, e.g. /tmp
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)

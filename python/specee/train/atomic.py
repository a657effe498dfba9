"""Files written whole or not at all: training runs for hours and can be
stopped at any moment (a session ends), and a stage resumes from what is on
disk, so a half-written file must never be there to be read."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def savez(path: Path, compressed: bool = False, **arrays) -> None:
    """np.savez (or savez_compressed) to `path` via a temporary file beside it."""
    tmp = path.with_name(path.stem + ".tmp.npz")
    (np.savez_compressed if compressed else np.savez)(tmp, **arrays)
    tmp.replace(path)

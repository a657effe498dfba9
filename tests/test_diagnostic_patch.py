"""bench/kernels/node_times.patch makes a diagnostic build (docs/kernels.md,
"Where a SmolLM2 step goes, node by node"): it must keep applying to the
sources it patches, or the figures it gave could not be taken again."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATCH = ROOT / "bench" / "kernels" / "node_times.patch"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_node_times_patch_still_applies():
    done = subprocess.run(["git", "apply", "--check", str(PATCH)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

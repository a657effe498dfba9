"""The head files that ship in the package: each small enough, for the
current exit features, naming its model, with the record that made it."""
from __future__ import annotations

import json

import gguf
import pytest

from specee.engine import EXIT_FEATURE_VERSION
from specee.fetch import known_models
from specee.heads.shipped import shipped_heads

MAX_BYTES = 30 * 2**20  # the limit for a shipped head file


@pytest.mark.parametrize("path", shipped_heads(), ids=lambda p: p.stem)
def test_shipped_head_file(path):
    assert path.stat().st_size <= MAX_BYTES
    reader = gguf.GGUFReader(path)
    assert len(reader.get_field("specee.base.fingerprint").contents()) > 0
    assert reader.get_field("specee.exit.feature_version").contents() == EXIT_FEATURE_VERSION
    record = json.loads(path.with_name(path.stem + ".record.json").read_text())
    assert record["heads"] == path.name
    assert path.stem in known_models() and record["model"].startswith(path.stem)
    assert record["reproduce"].startswith(f"specee train draft --model {path.stem} ")
    if "threshold" in record:  # the record says what the file holds
        assert reader.get_field("specee.exit.threshold").contents() == pytest.approx(record["threshold"])


def test_the_default_model_has_heads():
    assert "smollm2-135m" in [p.stem for p in shipped_heads()]

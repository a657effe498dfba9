"""What machine a benchmark ran on, for the records beside its figures."""
from __future__ import annotations

from specee.prompt_layout import cpu_name as cpu_model  # noqa: F401  (one definition, in the package)


def report(out: dict, path=None) -> None:
    """Prints a benchmark's record without its per-prompt rows, and writes
    the whole record to `path` (a .json file) when given."""
    import json
    from pathlib import Path

    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=1) + "\n")

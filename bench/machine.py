"""What machine a benchmark ran on, for the records beside its figures."""
from __future__ import annotations

from specee.prompt_layout import cpu_name as cpu_model  # noqa: F401  (one definition, in the package)

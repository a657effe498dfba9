"""Decode loops, each a thin driver over :class:`specee.engine.Context`:

- :mod:`.plain`: full-depth decoding (``generate``), the reference every
  other mode must reproduce;
- :mod:`.early_exit`: SpecEE's early-exit loop;
- :mod:`.speculative`: drafters, verification and the cost model;
- :mod:`.sampling`: the sampler every loop shares.
"""

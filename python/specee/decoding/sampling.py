"""Next-token sampling from a logits row: greedy, temperature, top-k, top-p, min-p.

Order of operations (as in Hugging Face ``generate``): divide by the
temperature, keep the ``top_k`` largest, softmax, keep the smallest set of
most likely tokens whose probability mass reaches ``top_p``, drop the tokens
less likely than ``min_p`` times the most likely one, then draw with a
seeded :class:`numpy.random.Generator`. ``temperature == 0`` is greedy
(argmax; the lowest id wins ties); a negative temperature is refused. Top-k uses ``argpartition`` (O(n)), so a
49k- or 152k-entry row costs well under a millisecond plus the top-p sort of
the survivors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ranges import MIN_P, SEED, TEMPERATURE, TOP_P, ZERO_OR_MORE

__all__ = ["Sampler", "sample", "probabilities"]


def sample(
    logits: np.ndarray,
    rng: np.random.Generator | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
) -> int:
    """Pick a token id from a 1-D ``logits`` row.

    ``top_k <= 0``, ``top_p >= 1`` and ``min_p <= 0`` disable those filters. ``rng`` is only
    needed (and only consumed, one draw per call) when sampling is not greedy.
    """
    row = np.asarray(logits)
    if row.ndim != 1 or row.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got shape {row.shape}")
    if temperature not in TEMPERATURE or top_p not in TOP_P:
        TEMPERATURE.check("temperature", temperature)
        TOP_P.check("top_p", top_p)
    if temperature == 0.0 or top_k == 1:
        token = int(np.argmax(row))
        if not np.isfinite(row[token]):
            _check_finite(row)
        return token
    if rng is None:
        raise ValueError("sampling with temperature > 0 needs a numpy Generator (rng)")
    ids, probs = _kept(row, temperature, top_k, top_p, min_p)
    cum = np.cumsum(probs)
    j = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    j = min(j, cum.size - 1)  # guard against rounding at the top end
    return int(j if ids is None else ids[j])


def probabilities(logits: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0,
                  min_p: float = 0.0) -> np.ndarray:
    """The distribution `sample` draws from, as a dense float64 row over the
    whole vocabulary (zero outside the kept tokens). Speculative sampling
    compares these rows of the target and the draft. Greedy: a point mass."""
    row = np.asarray(logits)
    if row.ndim != 1 or row.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got shape {row.shape}")
    TEMPERATURE.check("temperature", temperature)
    TOP_P.check("top_p", top_p)
    MIN_P.check("min_p", min_p)
    dense = np.zeros(row.size, dtype=np.float64)
    if temperature == 0.0 or top_k == 1:
        dense[sample(row)] = 1.0
        return dense
    ids, probs = _kept(row, temperature, top_k, top_p, min_p)
    if ids is None:
        dense[:] = probs / probs.sum()
    else:
        dense[ids] = probs / probs.sum()
    return dense


def _kept(row: np.ndarray, temperature: float, top_k: int, top_p: float,
          min_p: float = 0.0) -> tuple[np.ndarray | None, np.ndarray]:
    """The tokens sampling may pick (None: every id, in id order) and their
    unnormalised probabilities, after temperature, top-k, top-p and min-p."""
    # candidates: all ids, or the top_k largest (unordered) via argpartition
    if 0 < top_k < row.size:
        ids = np.argpartition(row, row.size - top_k)[row.size - top_k :]
        vals = row[ids].astype(np.float64)
    else:
        ids = None
        vals = row.astype(np.float64)
    _check_finite(vals)
    vals /= temperature
    vals -= vals.max()
    probs = np.exp(vals)
    probs /= probs.sum()

    if top_p < 1.0:
        order = _descending_order(probs, top_p)
        sorted_p = probs[order]
        cum = np.cumsum(sorted_p)
        keep = min(int(np.searchsorted(cum, top_p, side="left")) + 1, order.size)
        order = order[:keep]
        probs = sorted_p[:keep]
        ids = order if ids is None else ids[order]
    if min_p > 0.0:
        keep = np.flatnonzero(probs >= min_p * probs.max())  # the most likely token always stays
        probs = probs[keep]
        ids = keep if ids is None else ids[keep]
    return ids, probs


def _descending_order(probs: np.ndarray, mass: float, first: int = 1024) -> np.ndarray:
    """Indices of the largest ``probs``, sorted descending, covering ``mass``.

    Sorting a full 49k row costs ~5 ms; usually the top 1024 already hold the
    nucleus, so partition first and fall back to a full sort only if not.
    """
    if probs.size > 2 * first:
        top = np.argpartition(probs, probs.size - first)[probs.size - first :]
        if probs[top].sum() >= mass:
            return top[np.argsort(-probs[top], kind="stable")]
    return np.argsort(-probs, kind="stable")


def _check_finite(vals: np.ndarray) -> None:
    if np.isnan(vals).any():
        raise ValueError("logits contain NaN")
    if not np.isfinite(vals.max()):
        raise ValueError("logits have no finite maximum (all -inf or +inf present)")


@dataclass
class Sampler:
    """Sampling settings plus the generator they draw from.

    ``Sampler()`` is greedy. ``Sampler(temperature=0.8, top_k=40, top_p=0.95,
    min_p=0.05, seed=0).sample(logits)`` (llama.cpp's defaults, which the CLI,
    the server and its chat page use) gives the same sequence of draws for
    the same seed.
    """

    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter
    seed: int | None = None  # None = fresh OS entropy
    min_p: float = 0.0  # 0.0 = no min-p filter
    rng: np.random.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        TEMPERATURE.check("temperature", self.temperature)
        ZERO_OR_MORE.check("top_k", self.top_k)
        TOP_P.check("top_p", self.top_p)
        MIN_P.check("min_p", self.min_p)
        SEED.check_optional("seed", self.seed)
        self.reset()

    @property
    def greedy(self) -> bool:
        """True when every call returns the argmax."""
        return self.temperature == 0.0 or self.top_k == 1

    def reset(self, seed: int | None = None) -> None:
        """Restart the random stream (from ``seed`` if given, else ``self.seed``)."""
        if seed is not None:
            self.seed = SEED.check("seed", seed)
        self.rng = np.random.default_rng(self.seed)

    def sample(self, logits: np.ndarray, rng: np.random.Generator | None = None) -> int:
        """Token id drawn from ``logits`` with these settings (own rng by default)."""
        return sample(
            logits, rng if rng is not None else self.rng, self.temperature, self.top_k, self.top_p, self.min_p
        )

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The distribution ``sample`` draws from with these settings (dense)."""
        return probabilities(logits, self.temperature, self.top_k, self.top_p, self.min_p)

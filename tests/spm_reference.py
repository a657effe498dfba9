"""A slow, obviously-correct SentencePiece encoder to check the fast one against.

It restates llama.cpp's ``llm_tokenizer_spm`` in the plainest way: starting
from single characters, repeatedly merge the adjacent pair whose concatenation
is the token with the highest score (the leftmost such pair on a tie); then
write every piece that is not a token as ``<0xNN>`` byte tokens.
"""

from __future__ import annotations

from collections.abc import Sequence


def reference_spm_encode(text: str, tokens: Sequence[str], scores: Sequence[float]) -> list[int]:
    """Ids for an already escaped text piece ("▁" for spaces, prefix included)."""
    ids = {t: i for i, t in enumerate(tokens)}
    pieces = list(text)
    while True:
        best = None  # (score, position)
        for pos in range(len(pieces) - 1):
            tid = ids.get(pieces[pos] + pieces[pos + 1])
            if tid is not None and (best is None or scores[tid] > best[0]):
                best = (scores[tid], pos)
        if best is None:
            break
        pos = best[1]
        pieces[pos : pos + 2] = [pieces[pos] + pieces[pos + 1]]
    out: list[int] = []
    for piece in pieces:
        if piece in ids:
            out.append(ids[piece])
        else:
            out.extend(ids[f"<0x{b:02X}>"] for b in piece.encode("utf-8"))
    return out

"""OpenAI-shaped response bodies for both endpoints, whole or as the chunks
of a server-sent-event stream (`data: {json}` events, `data: [DONE]` last).

Beside the OpenAI fields, the last body or chunk carries llama.cpp's
`timings` and a `specee` object (the decoding mode and, for early exit, its
statistics).
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Optional

SSE_DONE = b"data: [DONE]\n\n"


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


class Responses:
    """Bodies for one request: chat ("chat.completion") or completion ("text_completion")."""

    def __init__(self, kind: str, model_id: str):
        self.chat = kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.model = model_id

    def _envelope(self, obj: str, choice: dict) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]}

    def whole(self, text: str, summary: dict) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": summary["finish_reason"]}
            body = self._envelope("chat.completion", choice)
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": summary["finish_reason"]}
            body = self._envelope("text_completion", choice)
        return {**body, "usage": summary["usage"], "timings": summary["timings"], "specee": summary["specee"]}

    def chunk(self, text: Optional[str], finish_reason: Optional[str] = None, role: bool = False) -> dict:
        """One streamed piece: `text`, or (text None) the last chunk with the finish reason."""
        if self.chat:
            delta = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return self._envelope("chat.completion.chunk", {"index": 0, "delta": delta,
                                                            "finish_reason": finish_reason})
        return self._envelope("text_completion", {"index": 0, "text": text or "", "logprobs": None,
                                                  "finish_reason": finish_reason})

    def last_chunks(self, summary: dict, include_usage: bool) -> list[dict]:
        last = {**self.chunk(None, summary["finish_reason"]), "timings": summary["timings"],
                "specee": summary["specee"]}
        if not include_usage:
            return [last]
        usage = {**self._envelope(last["object"], {}), "choices": [], "usage": summary["usage"]}
        return [last, usage]

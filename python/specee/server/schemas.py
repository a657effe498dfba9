"""Request bodies of /v1/chat/completions and /v1/completions, checked field
by field into a `GenerationRequest`, and `ApiError`, the OpenAI-style error
every refusal becomes.

Unknown fields are ignored (clients send many optional ones); fields whose
non-default values this server cannot honour (n > 1, logprobs, tools, ...)
are refused, so a client never silently gets less than it asked for.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..decoding.modes import check_mode
from ..engine import InvalidArgumentError
from .config import MODES, ServerConfig

CHAT_ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS = 4  # as the OpenAI API
VERIFY = ("full", "candidates")

# fields this server cannot honour, and the values that ask for nothing (null always does)
_UNSUPPORTED = {
    "n": (1,), "best_of": (1,), "echo": (False,), "logprobs": (False, 0), "top_logprobs": (0,),
    "suffix": ("",), "tools": ([],), "functions": ([],), "tool_choice": ("none",),
}


class ApiError(Exception):
    """A refusal with an HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type: str = "invalid_request_error", headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(param: Optional[str], message: str, code: Optional[str] = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass
class DecodeOptions:
    """How one request is decoded; every value already checked."""
    max_tokens: int
    temperature: float = 0.8  # llama.cpp's sampling defaults
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)
    mode: str = "vanilla"
    threshold: Optional[float] = None
    verify: Optional[str] = None
    lossy: bool = False  # the specee mode's paper early exit (the output may differ from the model's)


@dataclass
class GenerationRequest:
    kind: str                                    # "chat" or "completion"
    options: DecodeOptions
    messages: Optional[list[dict]] = None        # chat: [{"role", "content"}] with text content
    prompt: Union[str, list[int], None] = None   # completion: text or token ids
    stream: bool = False
    include_usage: bool = False                  # stream_options.include_usage


# ---- the body ------------------------------------------------------------------


def parse_json_object(raw: bytes) -> dict:
    """The body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(None, f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise bad_request(None, "the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise bad_request(None, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def parse_chat(body: dict, config: ServerConfig) -> GenerationRequest:
    return GenerationRequest("chat", _options(body, config), messages=_messages(body), **_streaming(body))


def parse_completion(body: dict, config: ServerConfig) -> GenerationRequest:
    return GenerationRequest("completion", _options(body, config), prompt=_prompt(body), **_streaming(body))


# ---- fields --------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False,
            param: Optional[str] = None) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_number(v) or v > hi or (v <= lo if lo_open else v < lo):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        param = param or name
        raise bad_request(param, f"'{param}' must be a number in {interval}, got {json.dumps(v)}")
    return float(v)


def _integer(body: dict, name: str, default: Optional[int], lo: int, hi: Optional[int] = None,
             why: str = "") -> Optional[int]:
    v = body.get(name)
    if v is None:
        return default
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise bad_request(name, f"'{name}' must be an integer {bound}{why}, got {json.dumps(v)}")
    return v


def _boolean(body: dict, name: str, default: bool, param: Optional[str] = None) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad_request(param or name, f"'{param or name}' must be true or false, got {json.dumps(v)}")
    return v


def _refuse_unsupported(body: dict) -> None:
    for name, harmless in _UNSUPPORTED.items():
        v = body.get(name)
        if v is not None and not any(type(v) is type(h) and v == h for h in harmless):
            raise bad_request(name, f"'{name}' = {json.dumps(v)} is not supported by this server")


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if (not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stops)):
        raise bad_request("stop", f"'stop' must be a non-empty string or a list of at most {MAX_STOP_STRINGS} "
                                  "non-empty strings")
    return stops


def _max_tokens(body: dict, limit: int) -> int:
    why = " (the server's --max-tokens-limit)"
    a = _integer(body, "max_tokens", None, 1, limit, why)
    b = _integer(body, "max_completion_tokens", None, 1, limit, why)
    if a is not None and b is not None and a != b:
        raise bad_request("max_tokens", "'max_tokens' and 'max_completion_tokens' disagree; give one")
    return a if a is not None else b if b is not None else limit


def _extension(body: dict, config: ServerConfig) -> tuple[str, Optional[float], Optional[str], bool]:
    """The "specee" field: {"mode", "threshold", "verify", "lossy"}, each overriding the server's flag."""
    ext = body.get("specee")
    if ext is None:
        return config.mode, config.threshold, config.verify, config.lossy
    if not isinstance(ext, dict):
        raise bad_request("specee", "'specee' must be an object with optional 'mode', 'threshold', 'verify', 'lossy'")
    unknown = sorted(set(ext) - {"mode", "threshold", "verify", "lossy"})
    if unknown:
        raise bad_request(f"specee.{unknown[0]}", f"unknown field 'specee.{unknown[0]}' "
                                                  "(allowed: mode, threshold, verify, lossy)")
    mode = ext.get("mode", config.mode)
    if mode not in MODES:
        raise bad_request("specee.mode", f"'specee.mode' must be one of {', '.join(MODES)}, got {json.dumps(mode)}")
    verify = ext.get("verify", config.verify)
    if verify is not None and verify not in VERIFY:
        raise bad_request("specee.verify", f"'specee.verify' must be full or candidates, got {json.dumps(verify)}")
    threshold = config.threshold
    if ext.get("threshold") is not None:
        threshold = _number(ext, "threshold", 0.0, 0.0, 1.0, param="specee.threshold")
    lossy = _boolean(ext, "lossy", config.lossy, param="specee.lossy") and mode == "specee"
    return mode, threshold, verify, lossy


def _options(body: dict, config: ServerConfig) -> DecodeOptions:
    _refuse_unsupported(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("model", "'model' must be a string")
    mode, threshold, verify, lossy = _extension(body, config)
    options = DecodeOptions(
        max_tokens=_max_tokens(body, config.max_tokens_limit),
        # llama.cpp's defaults (llama-server's too); temperature 0 is greedy
        temperature=_number(body, "temperature", 0.8, 0.0, 2.0),
        top_p=_number(body, "top_p", 0.95, 0.0, 1.0, lo_open=True),
        top_k=_integer(body, "top_k", 40, 0),
        min_p=_number(body, "min_p", 0.05, 0.0, 1.0),
        seed=_integer(body, "seed", None, 0, 2**64 - 1),
        stop=_stop(body),
        mode=mode, threshold=threshold, verify=verify, lossy=lossy,
    )
    greedy = options.temperature == 0.0 or options.top_k == 1
    if not greedy and verify == "candidates" and lossy:
        if "verify" in (body.get("specee") or {}):
            try:
                check_mode(mode, greedy, verify, lossy)  # the request asked for it: refused, as everywhere
            except InvalidArgumentError as e:
                raise bad_request("specee.verify", str(e))
        options.verify = None  # the server's default: a sampled request verifies fully (open_decoder)
    return options


def _streaming(body: dict) -> dict:
    stream = _boolean(body, "stream", False)
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise bad_request("stream_options", "'stream_options' must be an object")
    include_usage = _boolean(opts or {}, "include_usage", False, param="stream_options.include_usage")
    return {"stream": stream, "include_usage": include_usage}


def _content(i: int, content: Any) -> str:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    param = f"messages[{i}].content"
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise bad_request(param, f"'{param}' may only hold text parts ({{\"type\": \"text\", \"text\": ...}})")
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(param, f"'{param}' must be a string or a list of text parts")


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("messages", "'messages' must be a non-empty array of {\"role\", \"content\"} objects")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}]", f"'messages[{i}]' must be an object")
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise bad_request(f"messages[{i}].role",
                              f"'messages[{i}].role' must be one of {', '.join(CHAT_ROLES)}, got {json.dumps(role)}")
        out.append({"role": role, "content": _content(i, m.get("content"))})
    return out


def _prompt(body: dict) -> Union[str, list[int]]:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]  # a batch of one prompt
    if isinstance(p, str):
        if not p:
            raise bad_request("prompt", "'prompt' must not be empty")
        return p
    if isinstance(p, list) and p and all(_is_int(t) for t in p):
        return p
    raise bad_request("prompt", "'prompt' must be a non-empty string or a non-empty array of token ids "
                                "(one prompt per request)")

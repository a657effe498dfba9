"""Aggregate decode throughput of `specee serve`: the same N requests one
after another (1 stream) and all at once (N streams), and how many cores the
server process keeps busy meanwhile (CPU time over wall time, from /proc).

Starts `specee serve` as a child process on 127.0.0.1 and talks to it with
the openai client. With batching (the default) the N streams' full-depth
steps run as one batched pass per round; --no-batching steps them one by
one, for comparison.

    python bench/server_streams.py --streams 4 --tokens 64 --threads 2 [--no-batching] [--vs-generate 8]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai

PROMPTS = ["Once upon a time, in a small village by the sea,", "The history of the bicycle begins",
           "Copper is a metal that", "It was raining in the city, and", "Bread rises because",
           "Before a job interview, you should", "The sky looks blue because", "Bees make honey by"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, every thread included."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def os_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def burst(client: openai.OpenAI, n: int, concurrent: int, tokens: int, pid: int) -> dict:
    """n completions of `tokens` tokens, `concurrent` at a time."""
    def one(i: int) -> int:
        r = client.completions.create(model="m", prompt=PROMPTS[i % len(PROMPTS)], max_tokens=tokens,
                                      temperature=0)
        return r.usage.completion_tokens

    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    with ThreadPoolExecutor(concurrent) as pool:
        generated = sum(pool.map(one, range(n)))
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    return {"streams": concurrent, "requests": n, "tokens": generated, "wall_s": round(wall, 3),
            "tok_s": round(generated / wall, 1), "server_cpu_s": round(cpu, 3), "cores_busy": round(cpu / wall, 2),
            "server_os_threads": os_threads(pid)}


def _request_body(text: str, tokens: int) -> bytes:
    return json.dumps({"model": "m", "prompt": text, "max_tokens": tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()


def raw_stream(base: str, text: str, tokens: int) -> tuple[float, float, int, float]:
    """One streamed completion read with the standard library alone (read
    lines, parse JSON): the arrival times of the first and last text chunks,
    the completion tokens from `usage`, and the decode speed the server
    reports in `timings`."""
    host, port = base.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("POST", "/v1/completions", _request_body(text, tokens), {"Content-Type": "application/json"})
    first = last = None
    used, reported = 0, 0.0
    for line in conn.getresponse():
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        now = time.perf_counter()
        chunk = json.loads(line[6:])
        if chunk["choices"] and chunk["choices"][0]["text"]:
            first = first or now
            last = now
        used = (chunk.get("usage") or {}).get("completion_tokens", used)
        reported = (chunk.get("timings") or {}).get("predicted_per_second", reported)
    conn.close()
    return first, last, used, reported


def curl_stream(base: str, text: str, tokens: int) -> float:
    """The server's own decode speed (`timings`) for one stream read by curl,
    a client that costs next to no CPU: what a client on another machine
    would leave the server."""
    out = subprocess.run(["curl", "-sN", base + "/v1/completions", "-H", "Content-Type: application/json",
                          "--data-binary", "@-"], input=_request_body(text, tokens), capture_output=True,
                         check=True).stdout
    for line in reversed(out.splitlines()):
        if line.startswith(b"data: {") and b'"timings"' in line:
            return float(json.loads(line[6:])["timings"]["predicted_per_second"])
    raise RuntimeError("the stream had no timings")


def one_stream_vs_generate(client: openai.OpenAI, base: str, model: str, threads: int, tokens: int, n: int) -> dict:
    """Time to first token and decode speed of single streamed requests
    against `specee generate`'s prefill time and decode speed on the same
    prompts (in this process while the server idles), alternated prompt by
    prompt. The stream is read three ways: by the openai client and by a
    bare standard-library client (decode speed as they see it: they share
    the cores with the server), and by curl (the speed the server reports)."""
    from specee.engine import Model
    from specee.fetch import fetch_model
    from specee.decoding.plain import generate
    from specee.tokenizer import Tokenizer

    path = fetch_model(model, progress=False)
    tok = Tokenizer.from_gguf(path)
    rows = {k: [] for k in ("ttft", "prefill", "openai", "raw", "curl", "plain")}
    with Model(path) as m:
        for i in range(n):
            text = PROMPTS[i % len(PROMPTS)]
            t0 = time.perf_counter()
            first = last = None
            usage = None
            for chunk in client.completions.create(model="m", prompt=text, max_tokens=tokens, temperature=0,
                                                   stream=True, stream_options={"include_usage": True}):
                now = time.perf_counter()
                if chunk.choices and chunk.choices[0].text:
                    first = first or now
                    last = now
                usage = chunk.usage or usage
            rows["ttft"].append(first - t0)
            rows["openai"].append((usage.completion_tokens - 1) / (last - first) if last > first else 0.0)
            r_first, r_last, r_used, _ = raw_stream(base, text, tokens)
            rows["raw"].append((r_used - 1) / (r_last - r_first) if r_last > r_first else 0.0)
            rows["curl"].append(curl_stream(base, text, tokens))
            ids = tok.encode(text, parse_special=False)
            with m.context(n_ctx=2048, n_threads=threads) as ctx:
                r = generate(ctx, ids, tokens)
            rows["prefill"].append(r.prefill_s)
            rows["plain"].append(r.decode_tok_s)
    med = {k: statistics.median(v) for k, v in rows.items()}
    out = {"requests": n, "server_ttft_ms": round(med["ttft"] * 1e3, 2),
           "generate_prefill_ms": round(med["prefill"] * 1e3, 2),
           "ttft_over_prefill": round(med["ttft"] / med["prefill"], 3),
           "generate_decode_tok_s": round(med["plain"], 1)}
    for k in ("openai", "raw", "curl"):
        out[f"{k}_client_decode_tok_s"] = round(med[k], 1)
        out[f"{k}_client_decode_ratio"] = round(med[k] / med["plain"], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    ap.add_argument("--threads", type=int, default=0, help="the server's --threads (0: all cores)")
    ap.add_argument("--no-batching", action="store_true", help="pass --no-batching to the server")
    ap.add_argument("--vs-generate", type=int, default=0, metavar="N",
                    help="also N single streamed requests against specee generate (TTFT, decode speed)")
    args = ap.parse_args()

    port = free_port()
    cmd = [sys.executable, "-m", "specee.cli", "-q", "serve", "--model", args.model, "--port", str(port),
           "--parallel", str(args.streams), "--threads", str(args.threads)] + (["--no-batching"] if args.no_batching else [])
    proc = subprocess.Popen(cmd)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if urllib.request.urlopen(base + "/health").status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
        burst(client, 1, 1, 8, proc.pid)  # warm-up
        n = args.streams
        results = [burst(client, n, 1, args.tokens, proc.pid), burst(client, n, n, args.tokens, proc.pid)]
        results.append({"speedup": round(results[1]["tok_s"] / results[0]["tok_s"], 2)})
        if args.vs_generate:
            results.append({"one_stream_vs_generate": one_stream_vs_generate(
                client, base, args.model, args.threads, args.tokens, args.vs_generate)})
        print(json.dumps({"model": args.model, "threads": args.threads, "batching": not args.no_batching,
                          "cores": os.cpu_count(),
                          "results": results}, indent=1))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

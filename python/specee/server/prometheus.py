"""The server's Prometheus metrics (GET /metrics), in a registry of its own
so that several servers in one process (tests) count apart."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

PREFIX = "specee_"


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, n_slots: int):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(PREFIX + "requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "prompt tokens processed", registry=r)
        self.generated_tokens = Counter(PREFIX + "generated_tokens", "tokens generated", registry=r)
        self.decode_steps = Counter(PREFIX + "decode_steps", "decode steps run (every slot)", registry=r)
        self.batched_steps = Counter(PREFIX + "batched_steps",
                                     "rounds in which several slots decoded in one batched pass", registry=r)
        self.decode_seconds = Counter(PREFIX + "decode_seconds",
                                      "wall time of the compute thread's decode rounds; decode_steps over it is "
                                      "the server's decode throughput", registry=r)
        self.decode_tok_s = Gauge(PREFIX + "decode_tokens_per_second",
                                  "decode speed of the last finished request as its client saw it", registry=r)
        self.queue_depth = Gauge(PREFIX + "queue_depth", "requests waiting for a slot", registry=r)
        self.busy_slots = Gauge(PREFIX + "busy_slots", "slots decoding a request", registry=r)
        self.slots = Gauge(PREFIX + "slots", "slots (--parallel)", registry=r)
        self.slots.set(n_slots)
        self.exit_steps = Counter(PREFIX + "exit_steps", "early-exit decode steps", registry=r)
        self.early_exits = Counter(PREFIX + "early_exits", "early-exit steps that skipped layers", registry=r)
        self.exit_layers = Counter(PREFIX + "exit_layers", "layers computed by early-exit steps (mean exit layer = "
                                                           "exit_layers / exit_steps)", registry=r)
        self.drafted = Counter(PREFIX + "speculative_drafted_tokens", "tokens drafted and verified (speculative mode)",
                               registry=r)
        self.accepted = Counter(PREFIX + "speculative_accepted_tokens", "drafted tokens the model accepted",
                                registry=r)
        self.verify_steps = Counter(PREFIX + "speculative_verify_steps", "verification passes (acceptance = "
                                    "accepted / drafted; tokens per verification = (accepted + verify_steps) / "
                                    "verify_steps)", registry=r)
        self.cancelled = Counter(PREFIX + "cancelled_requests", "requests whose client went away", registry=r)

    def job_finished(self, summary: dict) -> None:
        usage, timings, ext = summary["usage"], summary["timings"], summary["specee"]
        self.prompt_tokens.inc(usage["prompt_tokens"])
        self.generated_tokens.inc(usage["completion_tokens"])
        self.decode_tok_s.set(timings["predicted_per_second"])
        if ext["mode"] == "specee":
            self.exit_steps.inc(ext["n_steps"])
            self.early_exits.inc(ext["n_exits"])
            self.exit_layers.inc(ext["sum_exit_layers"])
        elif ext["mode"] == "speculative":
            self.drafted.inc(ext["drafted"])
            self.accepted.inc(ext["accepted"])
            self.verify_steps.inc(ext["verify_steps"])

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Every gateway metric, defined once, on a registry owned by the app (no module-level globals).

Names follow Prometheus conventions: one ``alm_gateway_`` prefix, base units in the name, ``_total`` only on
counters. Labels come from small fixed sets (route, status code, engine name, error kind) and every known
series is created at 0 at start-up.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROUTES = ("chat_completions", "transcriptions", "models")
STATUS_CODES = ("200", "400", "401", "404", "413", "429", "499", "500", "502", "503", "504")
UPSTREAM_ERROR_KINDS = (
    "connect",
    "timeout",
    "read",
    "protocol",
    "status_5xx",
    "status_429",
    "status_other",
    "stream_interrupted",
    "event_too_large",
)
AFFINITY_RESULTS = ("hit", "miss")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_AUDIO_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_PER_AUDIO_SECOND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, p = self.registry, "alm_gateway_"
        self.requests = Counter(
            p + "requests_total", "Requests answered, by route and HTTP status code.", ["route", "code"], registry=r
        )
        self.request_duration = Histogram(
            p + "request_duration_seconds",
            "End-to-end request latency.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            "Time from request arrival to the first streamed chunk sent to the client.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.audio_input = Histogram(
            p + "input_audio_seconds", "Duration of each accepted input audio clip.", buckets=_AUDIO_BUCKETS, registry=r
        )
        self.ingest_duration = Histogram(
            p + "ingest_duration_seconds",
            "Decode + downmix + resample + re-encode time per request with audio.",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(p + "queue_depth", "Requests waiting for a free engine slot.", registry=r)
        self.engine_in_flight = Gauge(
            p + "engine_in_flight_requests", "This gateway's requests in flight per engine.", ["engine"], registry=r
        )
        self.engine_request_seconds = Counter(
            p + "engine_request_seconds",
            "Seconds this gateway's requests held a slot on each engine, summed (the integral of "
            "engine_in_flight_requests): its rate is the mean number in flight (summed over gateways: the "
            "engine's).",
            ["engine"],
            registry=r,
        )
        self.engine_running = Gauge(
            p + "engine_running_requests",
            "Requests in the engine's batch, all gateways', as the engine last reported "
            "(vllm:num_requests_running; 0 while unknown).",
            ["engine"],
            registry=r,
        )
        self.engine_waiting = Gauge(
            p + "engine_waiting_requests",
            "Requests queued inside the engine, all gateways', as the engine last reported "
            "(vllm:num_requests_waiting; 0 while unknown).",
            ["engine"],
            registry=r,
        )
        self.engine_load = Gauge(
            p + "engine_load_requests",
            "Requests this gateway counts on the engine when routing: its last report "
            "corrected by this gateway's traffic since, at least this gateway's own.",
            ["engine"],
            registry=r,
        )
        self.engine_healthy = Gauge(
            p + "engine_healthy", "1 when the engine passes health checks, else 0.", ["engine"], registry=r
        )
        self.upstream_errors = Counter(
            p + "upstream_errors_total", "Failed engine calls, by kind.", ["kind"], registry=r
        )
        self.engine_audio_in_flight = Gauge(
            p + "engine_audio_in_flight_seconds",
            "Seconds of audio in this gateway's requests holding a slot on the engine.",
            ["engine"],
            registry=r,
        )
        self.engine_work = Gauge(
            p + "engine_work_tokens",
            "Tokens of work this gateway counts on the engine when routing (least-work): prefill not done + decode "
            "outstanding of its own requests, plus other gateways' requests at an average request's work.",
            ["engine"],
            registry=r,
        )
        self.affinity = Counter(
            p + "affinity_requests_total",
            "Requests with audio routed by an affinity policy (first attempts): hit when the engine rendezvous "
            "hashing ranks first took it, miss when that engine was skipped (over the load bound or full).",
            ["result"],
            registry=r,
        )
        self.retries = Counter(
            p + "retries_total", "Requests re-sent to another engine before any byte reached the client.", registry=r
        )
        self.stream_resumes = Counter(
            p + "stream_resumes_total",
            "Resumable streams whose engine failed after the first event: resumed on another engine, or failed (no "
            "engine could continue them). Streams that cannot resume (failover off, tools, logprobs, n > 1) are not "
            "counted here, only in upstream_errors_total.",
            ["outcome"],
            registry=r,
        )
        # Audio per served model (server/routing/backlog.py); series created by add_model().
        self.audio_received = Counter(
            p + "audio_received_seconds_total",
            "Seconds of audio in requests for the model that reached admission (admitted or refused).",
            ["model"],
            registry=r,
        )
        self.audio_queued = Gauge(
            p + "audio_queued_seconds",
            "Seconds of audio in this gateway's requests for the model whose engine has not started answering "
            "(gateway queue, engine queue, encoder and prefill).",
            ["model"],
            registry=r,
        )
        self.audio_in_flight = Gauge(
            p + "audio_in_flight_seconds",
            "Seconds of audio in this gateway's admitted requests for the model until their answer or stream ends.",
            ["model"],
            registry=r,
        )
        self.audio_drain_rate = Gauge(
            p + "audio_drain_rate_seconds_per_second",
            "Seconds of the model's queued audio whose engine started answering per second while audio was queued "
            "(weighted average; what Retry-After of an audio_backlog 429 is computed from; 0 until measured).",
            ["model"],
            registry=r,
        )
        self.backlog_rejections = Counter(
            p + "audio_backlog_rejections_total",
            "Requests refused (429 audio_backlog) because the model's queued audio was at its bound.",
            ["model"],
            registry=r,
        )
        self.ttft_per_audio_second = Histogram(
            p + "time_to_first_token_seconds_per_audio_second",
            "Streams with audio: time from request arrival to the first chunk sent, divided by the request's "
            "seconds of audio.",
            ["model"],
            buckets=_PER_AUDIO_SECOND_BUCKETS,
            registry=r,
        )
        for route in ROUTES:
            self.request_duration.labels(route)
            for code in STATUS_CODES:
                self.requests.labels(route, code)
        self.ttft.labels("chat_completions")
        for kind in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(kind)
        for result in AFFINITY_RESULTS:
            self.affinity.labels(result)
        for outcome in ("resumed", "failed"):
            self.stream_resumes.labels(outcome)

    def add_model(self, model: str) -> None:
        """Create a served model's audio series at 0 (called when the backlog first learns of a model)."""
        for family in (
            self.audio_received,
            self.audio_queued,
            self.audio_in_flight,
            self.audio_drain_rate,
            self.backlog_rejections,
            self.ttft_per_audio_second,
        ):
            family.labels(model)

    def _engine_series(self) -> tuple[Gauge | Counter, ...]:
        return (
            self.engine_in_flight,
            self.engine_request_seconds,
            self.engine_running,
            self.engine_waiting,
            self.engine_load,
            self.engine_healthy,
            self.engine_audio_in_flight,
            self.engine_work,
        )

    def add_engine(self, name: str) -> None:
        """Create an engine's series at 0 (called when the pool learns of an engine)."""
        for family in self._engine_series():
            family.labels(name)

    def engine_reported(self, name: str, running: int, waiting: int) -> None:
        self.engine_running.labels(name).set(running)
        self.engine_waiting.labels(name).set(waiting)

    def remove_engine(self, name: str) -> None:
        """Drop an engine's series (called when DNS no longer lists it)."""
        for family in self._engine_series():
            with contextlib.suppress(KeyError):  # never set for this engine
                family.remove(name)

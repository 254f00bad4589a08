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

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_AUDIO_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


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
        self.retries = Counter(
            p + "retries_total", "Requests re-sent to another engine before any byte reached the client.", registry=r
        )
        for route in ROUTES:
            self.request_duration.labels(route)
            for code in STATUS_CODES:
                self.requests.labels(route, code)
        self.ttft.labels("chat_completions")
        for kind in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(kind)

    def _engine_gauges(self) -> tuple[Gauge, ...]:
        return (self.engine_in_flight, self.engine_running, self.engine_waiting, self.engine_load, self.engine_healthy)

    def add_engine(self, name: str) -> None:
        """Create an engine's series at 0 (called when the pool learns of an engine)."""
        for gauge in self._engine_gauges():
            gauge.labels(name).set(0)

    def engine_reported(self, name: str, running: int, waiting: int) -> None:
        self.engine_running.labels(name).set(running)
        self.engine_waiting.labels(name).set(waiting)

    def remove_engine(self, name: str) -> None:
        """Drop an engine's series (called when DNS no longer lists it)."""
        for gauge in self._engine_gauges():
            with contextlib.suppress(KeyError):  # never set for this engine
                gauge.remove(name)

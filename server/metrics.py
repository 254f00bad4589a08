"""Every gateway metric, defined once, on a registry owned by the app (no module-level globals).

Names follow Prometheus conventions: one ``alm_gateway_`` prefix, base units in the name, ``_total`` only on
counters. Labels come from small fixed sets (route, status code, engine name, error kind) and every known
series is created at 0 at start-up.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROUTES = ("chat_completions", "transcriptions", "models")
STATUS_CODES = ("200", "400", "401", "404", "413", "429", "499", "500", "502", "503", "504")
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "read", "protocol", "status_5xx", "stream_interrupted")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_AUDIO_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, p = self.registry, "alm_gateway_"
        self.requests = Counter(p + "requests_total", "Requests answered, by route and HTTP status code.",
                                ["route", "code"], registry=r)
        self.request_duration = Histogram(p + "request_duration_seconds", "End-to-end request latency.",
                                          ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds",
                              "Time from request arrival to the first streamed chunk sent to the client.",
                              ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.audio_input = Histogram(p + "input_audio_seconds", "Duration of each accepted input audio clip.",
                                     buckets=_AUDIO_BUCKETS, registry=r)
        self.ingest_duration = Histogram(p + "ingest_duration_seconds",
                                         "Decode + downmix + resample + re-encode time per request with audio.",
                                         buckets=_FAST_BUCKETS, registry=r)
        self.queue_depth = Gauge(p + "queue_depth", "Requests waiting for a free engine slot.", registry=r)
        self.engine_in_flight = Gauge(p + "engine_in_flight_requests", "Requests in flight per engine.",
                                      ["engine"], registry=r)
        self.engine_healthy = Gauge(p + "engine_healthy", "1 when the engine passes health checks, else 0.",
                                    ["engine"], registry=r)
        self.upstream_errors = Counter(p + "upstream_errors_total", "Failed engine calls, by kind.",
                                       ["kind"], registry=r)
        self.retries = Counter(p + "retries_total", "Requests re-sent to another engine before any byte reached "
                               "the client.", registry=r)
        for route in ROUTES:
            self.request_duration.labels(route)
            for code in STATUS_CODES:
                self.requests.labels(route, code)
        self.ttft.labels("chat_completions")
        for kind in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(kind)

    def add_engine(self, name: str) -> None:
        """Create an engine's series at 0 (called when the pool learns of an engine)."""
        self.engine_in_flight.labels(name).set(0)
        self.engine_healthy.labels(name).set(0)

    def remove_engine(self, name: str) -> None:
        """Drop an engine's series (called when DNS no longer lists it)."""
        for gauge in (self.engine_in_flight, self.engine_healthy):
            try:
                gauge.remove(name)
            except KeyError:
                pass

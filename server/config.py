"""Gateway settings: every knob, one env prefix (``ALM_``), validated at start-up.

``load_settings()`` is called by the app factory's caller (the launcher, uvicorn's factory or a test);
nothing here reads the environment at import time.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from server.families.facts import DEFAULT_CHOICES, ModelFacts, family_facts, parse_facts
from server.families.registry import DEFAULT_FAMILY

MiB = 1024 * 1024
DEFAULT_MAX_NUM_SEQS = 256
"""What the gateway assumes an engine batches when ``ALM_MAX_NUM_SEQS`` is unset (vLLM's default on most GPUs)."""

CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Gateway configuration. Each field is read from ``ALM_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="ALM_", extra="ignore", frozen=True)

    log_level: str = "INFO"
    """Level of the gateway's own log (``server.*`` loggers); uvicorn's is set on its command line."""

    # --- engines ---
    engine_urls: CommaList = Field(default_factory=lambda: ["http://127.0.0.1:8000"], min_length=1)
    """Comma-separated engine base URLs (vLLM OpenAI servers)."""
    engine_dns_expand: bool = False
    """Resolve each engine URL's host name to all its addresses (docker compose scaled service)."""
    health_interval_s: float = Field(2.0, gt=0)
    health_timeout_s: float = Field(2.0, gt=0)
    eject_after_failures: int = Field(2, ge=1)
    """Consecutive failed health checks before an engine is ejected (a failed request ejects at once)."""

    # --- load and time limits ---
    max_inflight_per_engine: int = Field(0, ge=0)
    """Requests admitted to one engine at once, counting those the engine reports from other gateways
    (``engine_load_metrics``). 0 → ``max_num_seqs + engine_max_waiting``: the engine's batch plus a short queue
    inside vLLM; a positive value overrides that."""
    max_queue: int = Field(64, ge=0)
    """Requests that may wait in the gateway for a free engine slot (bursts beyond every engine's batch and
    queue); beyond that → 429."""
    retry_after_s: int = Field(1, ge=0)
    max_queued_audio_seconds: float = Field(3600.0, ge=0)
    """Seconds of audio per model this gateway holds queued (admitted, engine not answering yet: in the gateway's
    queue, the engine's queue or prefill); a request with audio beyond it → 429 ``audio_backlog`` with a
    Retry-After from the measured drain rate (server/routing/backlog.py). 0 → no bound. The default, an hour of
    audio, is about 5 s of work for one GPU engine at MiDashengLM's published batch throughput (25 requests of 30 s per
    second), so a GPU deployment's bursts never meet it; for slower engines (CPU) lower it to what they drain
    well within ``request_timeout_s``."""
    request_timeout_s: float = Field(600.0, gt=0)
    """End-to-end deadline per request (queueing included) → 504."""
    connect_timeout_s: float = Field(3.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    """Engines tried per request: before anything reached the client, and for a stream also after (failover)."""
    stream_failover: bool = True
    """A stream whose engine fails after its first event resumes on another engine (the text already sent
    continued as the final assistant message; server/relay/resume.py): the client sees one uninterrupted stream. Off →
    such a stream ends with an SSE error event."""

    # --- engine load ---
    max_num_seqs: int | None = Field(None, ge=1)
    """Sequences one engine batches: vLLM's ``--max-num-seqs``, the same ``ALM_MAX_NUM_SEQS`` the engine contract
    (alm/engine.py) starts engines with; vLLM 0.32 does not publish it (only its dev-mode ``/server_info``).
    Unset → 256 is assumed, vLLM's default on most GPUs (its CPU build: 128; GPUs of 70 GiB and more: 1024)."""
    engine_max_waiting: int = Field(8, ge=0)
    """Requests admitted per engine beyond its batch. They wait inside vLLM, which adds each to the batch as
    soon as a sequence ends and counts it in ``vllm:num_requests_waiting`` (the engine HPA's metric): keep it
    above the HPA's target (4 per engine in deploy/k8s/engine-hpa.yaml) or the HPA never scales."""
    engine_load_metrics: bool = True
    """Every health round, read ``vllm:num_requests_running`` and ``vllm:num_requests_waiting`` from each
    engine's ``/metrics``: routing and admission then count every gateway's requests, not only this one's."""
    engine_load_smoothing: float = Field(0.2, gt=0, le=1)
    """Weight of each report's other-gateway requests against the earlier reports' (server/routing/load.py):
    lower damps herding between gateways, 1 reacts to each report in full."""
    engine_metrics_max_bytes: int = Field(4 * MiB, ge=4096)
    """Most of an engine's ``/metrics`` answer read per round (reading stops once both series are in hand)."""

    # --- routing (server/routing/policies/, docs/routing.md) ---
    routing: Literal["least-request", "least-work", "affinity", "affinity-least-work"] = "affinity-least-work"
    """Which healthy engine takes a request: fewest requests; least work (audio + text prefill tokens not done yet
    + decode tokens outstanding); the engine rendezvous hashing of the request's first clip picks (multi-turn
    chats about a clip reach the engine whose prefix cache holds it), with bounded load; or (default) that
    engine while it is within the bound, else (and for requests without audio) least work."""
    routing_epsilon: float = Field(0.5, ge=0)
    """Affinity's bound: an engine whose work is above (1 + this) × the average is skipped."""
    routing_output_tokens: int = Field(128, ge=0)
    """Decode tokens a request without ``max_tokens`` is counted as, in an engine's work."""

    # --- upstream ---
    max_sse_event_bytes: int = Field(4 * MiB, ge=1024)
    """Largest SSE event relayed from an engine (bounds the gateway's buffer per stream); a larger one, or that
    much without an event end, ends the client's stream with an error event."""

    # --- auth ---
    api_keys: CommaList = Field(default_factory=list)
    """Comma-separated accepted Bearer keys; empty → auth off."""

    # --- audio ---
    max_audio_bytes: int = Field(25 * MiB, gt=0)
    max_audio_seconds: float = Field(600.0, gt=0)
    min_audio_seconds: float = Field(0.2, ge=0)
    max_audio_channels: int = Field(8, ge=1, le=64)
    """Channels per clip (8: up to 7.1 surround); more → 400."""
    max_audio_source_rate: int = Field(192_000, ge=8_000, le=768_000)
    """Highest source sample rate (Hz) decoded; higher → 400."""
    max_audio_source_samples: int = Field(0, ge=0)
    """Decoded samples × channels per clip, checked from the header and while decoding (bounds decompression
    bombs); 0 → (max_audio_seconds + 1) × 96,000, i.e. ten minutes of 48 kHz stereo at the defaults."""
    audio_decode_timeout_s: float = Field(20.0, gt=0)
    """Decode time per clip; longer → 400 audio_decode_timeout."""
    max_clips_per_request: int = Field(4, ge=1)
    ingest_threads: int = Field(4, ge=1)
    shared_audio_dir: str = ""
    """Directory the engines read too (same host; tmpfs such as /dev/shm/alm; each engine started with
    ``--allowed-local-media-path`` on it): clips are handed over as files instead of base64 in the JSON.
    Empty → inline base64 (engines on other hosts). ``alm serve`` sets it."""
    allow_audio_urls: bool = False
    """Allow http(s) audio URLs (fetched by the gateway)."""
    audio_url_domains: CommaList = Field(default_factory=list)
    """Allowed host names for http(s) audio URLs (exact match or subdomain)."""
    audio_url_timeout_s: float = Field(10.0, gt=0)
    audio_url_allow_private: bool = False
    """Also allow loopback/private/link-local targets (on-prem media servers only)."""

    # --- request limits ---
    max_text_body_bytes: int = Field(2 * MiB, ge=64 * 1024)
    """Largest request JSON once its base64 audio strings are left out (→ 413; the whole body stays within
    ``max_body_bytes``). It also caps how many JSON
    values any body may hold (one per 4 bytes of this limit, counted from the raw bytes before parsing), so
    neither a text body nor a body carrying audio can make the parser build millions of objects."""
    max_body_bytes_in_flight: int = Field(0, ge=0)
    """Bytes of request bodies (those over 64 KiB) being read or processed at once, all requests together;
    beyond it → 429 with Retry-After. 0 → twice the largest chat body."""
    max_body_bytes_per_client: int = Field(0, ge=0)
    """Of ``max_body_bytes_in_flight``, what one client (its API key; without keys, its address) may hold at
    once; beyond it → 429 for that client only. 0 → half the budget, at least the largest chat body."""
    body_read_timeout_s: float = Field(10.0, gt=0)
    """Grace period for reading a request body, from its start; after it, every ``body_rate_window_s`` must
    bring at least ``body_min_rate_bytes_s`` × that many bytes, else → 408 (a stalled body is cut within
    ``max(body_read_timeout_s, body_rate_window_s)`` of stalling, however much it sent before)."""
    body_min_rate_bytes_s: int = Field(64 * 1024, gt=0)
    body_rate_window_s: float = Field(10.0, gt=0)
    body_max_seconds: float = Field(300.0, gt=0)
    """No body takes longer than this to arrive (→ 408): a largest chat body (~134 MiB) needs ~460 KiB/s."""
    trusted_proxies: CommaList = Field(default_factory=list)
    """Addresses of load balancers whose ``X-Forwarded-For`` names the client (uvicorn's
    ``forwarded_allow_ips``; ``*`` for any): per-client limits then count the real client. Empty → the header is
    ignored and the peer address is the client."""
    allowed_hosts: CommaList = Field(default_factory=list)
    """Host (and Origin) names requests may carry (``*``: any); loopback names are always allowed. Empty → on a
    connection to a loopback address only loopback names (a web page cannot reach a gateway on localhost through
    a rebound DNS name), elsewhere any. A Host not allowed → 403 ``bad_host``."""

    # --- HTTP server (alm gateway; server/api/http_server.py) ---
    http_max_header_bytes: int = Field(32 * 1024, ge=1024)
    """Request line + headers of one request; more → 431 and the connection is closed."""
    http_header_timeout_s: float = Field(10.0, gt=0)
    """From a request's first byte to the end of its headers; slower → 408 and the connection is closed."""
    http_keep_alive_timeout_s: float = Field(5.0, gt=0)
    """An idle connection (before its first request or between requests) is closed after this. Behind a load
    balancer that reuses connections, set it above the balancer's idle timeout."""
    http_max_connections: int = Field(1024, ge=2)
    """Open connections (and requests in flight) at once; a request beyond it gets uvicorn's 503 (overload),
    except ``/health`` and ``/ready``, which are always answered."""
    http_max_connections_per_client: int = Field(256, ge=1)
    """Open connections from one peer address; a request on one beyond it → 429 ``too_many_connections`` and the
    connection is closed. Behind a load balancer (every connection from its address) raise it to
    ``http_max_connections``."""
    graceful_shutdown_s: int = Field(30, ge=0)
    """On SIGTERM: seconds in-flight requests get to finish before the gateway stops."""

    # --- context budget ---
    context_check: bool = True
    """Refuse (400 ``context_length_exceeded``) a chat whose audio tokens + text tokens (a lower bound) + requested
    output exceed the model's max model length, before any engine works on it (server/ingest/context_budget.py). The
    length comes from the engines' ``/v1/models`` (``max_model_len``; the smallest among a model's engines);
    unknown → no check."""
    model_facts: Annotated[dict[str, ModelFacts], NoDecode] = Field(default_factory=dict)
    """Served model name → its family and audio facts (server/families/facts.py), JSON: ``{"name": "qwen2-audio"}``
    or ``{"name": {"family": "qwen2-audio", "max_clip_seconds": 30}}``. ``alm serve`` fills it in from the
    checkpoints; a model not named here gets ``audio_token_model``'s facts."""
    audio_token_model: str = DEFAULT_FAMILY
    """The family of models ``model_facts`` does not name (their audio-token formula, clip limit and transcription
    prompt): a family of server/families/registry.py (``midashenglm``, ``qwen2-audio``, ``qwen2.5-omni``,
    ``qwen3-omni``, ``qwen-audio-chat``), or ``none`` (MiDashengLM's facts with audio counted as 0 tokens, for
    models whose formula the gateway does not know)."""
    context_text_bytes_per_token: int = Field(256, ge=0)
    """Text counts as (its non-whitespace UTF-8 bytes) / this many tokens: a lower bound for any tokenizer whose
    longest token is at most this many bytes; 0 → text counted as 0 tokens."""
    context_reserve_output: bool = True
    """Count ``max_tokens`` / ``max_completion_tokens`` in the budget (OpenAI's rule). Off → vLLM's own rule: the
    prompt must leave room for one token and the engine shortens the output to fit."""

    # --- transcriptions ---
    transcription_prompt: str = ""
    """Instruction sent with a transcription's clip; empty → the model's own (its facts' ``transcription_prompt``;
    MiDashengLM: "Transcribe the audio.")."""
    transcription_max_tokens: int = Field(448, ge=1)

    # --- structured output (server/guards/structured.py): what an engine may be asked to compile, per request ---
    max_schema_bytes: int = Field(64 * 1024, ge=1024)
    """Serialised size of the request's JSON schemas together (response_format, structured_outputs, tools)."""
    max_schema_depth: int = Field(32, ge=4, le=64)
    """Objects and arrays nested in a schema (vLLM's own limit is 64); also regex group nesting."""
    max_schema_nodes: int = Field(4096, ge=16)
    """JSON values in the request's schemas together (enum values included)."""
    max_schema_alternatives: int = Field(256, ge=1)
    """``anyOf``/``oneOf``/``allOf`` branches plus regex ``|`` alternatives, summed over the request."""
    max_schema_repeat: int = Field(64, ge=0)
    """Counted repetitions: regex ``{m,n}`` (nested ones multiplied) and each distinct string ``minLength``/
    ``maxLength``, summed: the costliest thing to compile (``.{0,64}``: seconds on a 150k-token vocabulary)."""
    max_regex_chars: int = Field(4096, ge=16)
    """Length of each regex (``structured_outputs.regex``/``whitespace_pattern``, schema ``pattern``)."""
    max_grammar_bytes: int = Field(16 * 1024, ge=256)
    """Size of ``structured_outputs.grammar``, and of the ``choice`` strings together."""
    max_choices: int = Field(256, ge=1)
    """Entries of ``structured_outputs.choice``."""

    # --- answer bounds (server/guards/output.py; issue 17) ---
    max_n: int = Field(16, ge=1)
    """Most choices (``n``, and ``best_of``) one chat request may ask for; more → 400 ``integer_above_max_value``.
    Each choice is a sequence the engine decodes, and the request holds one slot however many it asks."""
    max_top_logprobs: int = Field(20, ge=0)
    """Most ``top_logprobs`` (and ``logprob_token_ids``) per token; OpenAI's maximum is 20, vLLM's default too."""
    max_total_output_tokens: int = Field(65536, ge=1)
    """Most tokens a request of several choices may ask the engine to decode: n × ``max_completion_tokens`` /
    ``max_tokens`` (without either, n × ``routing_output_tokens``); more → 400 ``too_many_output_tokens``. One
    choice is bounded by the model's context instead (``context_check``)."""
    max_answer_bytes: int = Field(16 * MiB, ge=64 * 1024)
    """Largest non-streamed engine answer read; a larger one → 400 ``answer_too_large`` (the client asked for it;
    streaming has no such bound), its engine connection closed, the engine not blamed."""
    health_progress_grace_s: float = Field(30.0, ge=0)
    """A health check that times out does not count as a failure while this gateway holds requests on the engine
    and saw one of them progress (answered, or its stream's first event) within this many seconds: a busy
    engine's API server answers ``/health`` late, and ejecting it would only move its load. 0 → off."""

    # --- slow clients and exposed details (issue 17, low findings) ---
    client_write_timeout_s: float = Field(30.0, gt=0)
    """A stream whose client takes no data for this long (the server's write buffer stays full: it stopped
    reading) is ended: its engine request is aborted and its slot released."""
    protect_details: bool | None = None
    """Require an API key for ``/metrics`` and for ``/ready``'s details (engine count, models); ``/ready``
    answers its status (200/503) to anyone, as probes carry no key. None → on exactly when ``api_keys`` are set."""

    @field_validator("engine_urls", "api_keys", "audio_url_domains", "trusted_proxies", "allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, v: object) -> object:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    @field_validator("engine_urls")
    @classmethod
    def _check_urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"engine URL must start with http:// or https://: {url!r}")
        return [url.rstrip("/") for url in v]

    @field_validator("audio_token_model")
    @classmethod
    def _check_audio_token_model(cls, v: str) -> str:
        if v not in DEFAULT_CHOICES:
            raise ValueError(f"audio_token_model must be one of {', '.join(DEFAULT_CHOICES)}: {v!r}")
        return v

    @field_validator("model_facts", mode="before")
    @classmethod
    def _parse_model_facts(cls, v: object) -> object:
        return parse_facts(v)

    @model_validator(mode="after")
    def _check_audio_limits(self) -> Settings:
        if self.min_audio_seconds >= self.max_audio_seconds:
            raise ValueError("min_audio_seconds must be below max_audio_seconds")
        return self

    @property
    def max_body_bytes(self) -> int:
        """Largest request body accepted: every clip at its byte limit in base64, plus slack."""
        return self.max_clips_per_request * (4 * self.max_audio_bytes // 3 + 4) + MiB

    @model_validator(mode="after")
    def _check_request_limits(self) -> Settings:
        if 0 < self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                f"max_body_bytes_in_flight must be 0 or at least the largest chat body ({self.max_body_bytes} bytes)"
            )
        return self

    @model_validator(mode="after")
    def _check_audio_urls(self) -> Settings:
        if self.allow_audio_urls and not self.audio_url_domains:
            raise ValueError(
                "allow_audio_urls is on but audio_url_domains is empty, so every audio URL would be refused: "
                "list the domains to fetch from in ALM_AUDIO_URL_DOMAINS (comma-separated), or turn "
                "ALM_ALLOW_AUDIO_URLS off"
            )
        return self

    @property
    def body_bytes_in_flight(self) -> int:
        return self.max_body_bytes_in_flight or 2 * self.max_body_bytes

    @property
    def body_bytes_per_client(self) -> int:
        return self.max_body_bytes_per_client or max(self.body_bytes_in_flight // 2, self.max_body_bytes)

    def facts_for(self, model: str) -> ModelFacts:
        """The facts of the model a request names; models ``model_facts`` does not name get the default family's."""
        return self.model_facts.get(model) or family_facts(self.audio_token_model)

    @property
    def engine_capacity(self) -> int:
        """Requests one engine is given at once (running in its batch + waiting inside it)."""
        return self.max_inflight_per_engine or (self.max_num_seqs or DEFAULT_MAX_NUM_SEQS) + self.engine_max_waiting


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (``ALM_*``); keyword overrides win."""
    return Settings(**overrides)  # type: ignore[arg-type]

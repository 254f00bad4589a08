"""Gateway settings: every knob, one env prefix (``ALM_``), validated at start-up.

``load_settings()`` is called by the app factory's caller (the launcher, uvicorn's factory or a test);
nothing here reads the environment at import time.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024

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
    max_inflight_per_engine: int = Field(16, ge=1)
    max_queue: int = Field(64, ge=0)
    """Requests that may wait for a free engine slot; beyond that → 429."""
    retry_after_s: int = Field(1, ge=0)
    request_timeout_s: float = Field(600.0, gt=0)
    """End-to-end deadline per request (queueing included) → 504."""
    connect_timeout_s: float = Field(3.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    """Engines tried per request while nothing has been sent to the client."""

    # --- auth ---
    api_keys: CommaList = Field(default_factory=list)
    """Comma-separated accepted Bearer keys; empty → auth off."""

    # --- audio ---
    max_audio_bytes: int = Field(25 * MiB, gt=0)
    max_audio_seconds: float = Field(600.0, gt=0)
    min_audio_seconds: float = Field(0.2, ge=0)
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

    # --- transcriptions ---
    transcription_prompt: str = "Transcribe the audio."
    transcription_max_tokens: int = Field(448, ge=1)

    @field_validator("engine_urls", "api_keys", "audio_url_domains", mode="before")
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

    @model_validator(mode="after")
    def _check_audio_limits(self) -> Settings:
        if self.min_audio_seconds >= self.max_audio_seconds:
            raise ValueError("min_audio_seconds must be below max_audio_seconds")
        return self

    @property
    def max_body_bytes(self) -> int:
        """Largest request body accepted: every clip at its byte limit in base64, plus slack."""
        return self.max_clips_per_request * (4 * self.max_audio_bytes // 3 + 4) + MiB


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (``ALM_*``); keyword overrides win."""
    return Settings(**overrides)  # type: ignore[arg-type]

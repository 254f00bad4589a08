"""``create_app(settings)``: the FastAPI app; its lifespan owns the HTTP clients, engine pool and ingest pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import httpx
from fastapi import FastAPI

from server.api.error_handlers import install_error_handlers
from server.api.middleware import GatewayMiddleware
from server.api.routes import chat, health, models, transcriptions
from server.config import Settings, load_settings
from server.gateway import Gateway
from server.ingest.shared_audio import SharedAudioDir
from server.metrics import Metrics
from server.relay.upstream import Upstream, engine_session
from server.routing.pool import EnginePool

log = logging.getLogger("server")


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics()
        # Engines on aiohttp (per-request CPU, see upstream.py); client audio URLs on httpx (server/ingest/fetch.py).
        async with engine_session() as session, httpx.AsyncClient(timeout=settings.audio_url_timeout_s) as client:
            pool = EnginePool(settings, session, metrics)
            executor = ThreadPoolExecutor(settings.ingest_threads, thread_name_prefix="alm-ingest")
            shared = (
                SharedAudioDir(settings.shared_audio_dir, settings.request_timeout_s + 60)
                if settings.shared_audio_dir
                else None
            )
            app.state.gateway = Gateway(
                settings, pool, Upstream(settings, pool, session, metrics), metrics, client, executor, shared
            )
            await pool.check_all()
            tasks = [asyncio.create_task(pool.run_health_checks())]
            if shared is not None:
                tasks.append(asyncio.create_task(shared.run_sweeper()))
            log.info(
                "gateway up: %d engine(s), models %s, audio to engines %s",
                len(pool.engines),
                pool.served_models(),
                f"as files in {shared.root}" if shared else "inline (base64)",
            )
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="alm gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.add_middleware(GatewayMiddleware)
    install_error_handlers(app)
    for module in (chat, transcriptions, models, health):
        app.include_router(module.router)
    return app


def configure_logging(level: str) -> None:
    logger = logging.getLogger("server")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def app_from_env() -> FastAPI:
    """uvicorn factory: ``uvicorn --factory server.api.app:app_from_env`` (settings from ``ALM_*``)."""
    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)

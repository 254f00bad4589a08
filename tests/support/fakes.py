"""A tiny, scriptable, misbehaving engine (for failure-path unit tests) and a way to serve ASGI apps in a thread."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from alm.processes import free_port


@contextmanager
def serve(app, port: int | None = None, config: uvicorn.Config | None = None) -> Iterator[str]:
    """Run ``app`` with uvicorn in a daemon thread (lifespan included); yields its base URL. ``config``: served
    as given instead (its app, host and port), e.g. the gateway's own ``server.api.http_server.uvicorn_config``."""
    port = config.port if config is not None else port or free_port()
    config = config or uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server failed to start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class FakeEngine:
    """Behaviour knobs (change them while serving): ``mode`` is one of
    ok | status (answer ``status`` with ``error_body`` or an OpenAI-shaped error, plus ``headers``)
    | hang (never answer, not even headers) | hold (non-streamed: answer once ``release()`` is called)
    | break_stream (die after 2 SSE events) | raw (streams: send ``raw_chunks`` verbatim, then end).
    ``stall_after``: streams (ok and raw) go silent after that many events/chunks until the client leaves;
    ``die_after``: streams (ok and raw) drop the connection after that many events/chunks (an engine killed).

    ``/metrics`` reports load as vLLM does: the chat requests in progress, the first ``max_num_seqs`` of them
    ``vllm:num_requests_running`` and the rest ``vllm:num_requests_waiting``, plus ``extra_running`` /
    ``extra_waiting`` (another gateway's traffic, scripted); ``metrics_body`` replaces the whole answer.
    ``/load`` reports as vLLM does with ``--enable-server-load-tracking``: every request in progress, the
    ``extra_*`` ones and ``extra_in_server`` (requests in the API server's pre-/post-processing, which the
    scheduler's gauges do not count); ``load_endpoint`` False → 404, as a vLLM without the endpoint.

    Every request the gateway abandons (closes the connection of) is recorded in ``aborts`` with the stage it
    had reached: ``before_headers``, ``before_first_event`` (headers sent, no body) or ``streaming``."""

    model: str = "fake-model"
    max_model_len: int | None = None
    """Reported in ``/v1/models`` as vLLM does, when set."""
    mode: str = "ok"
    status: int = 500
    error_body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    healthy: bool = True
    stream_events: int = 3
    event_padding: int = 0
    """Characters added to each ``ok`` stream event's content (large events fill a client's socket buffers)."""
    event_delay_s: float = 0.0
    stall_after: int | None = None
    die_after: int | None = None
    raw_chunks: list[bytes] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    aborts: list[str] = field(default_factory=list)
    completed: int = 0
    health_checks: int = 0
    max_num_seqs: int = 256
    extra_running: int = 0
    extra_waiting: int = 0
    metrics_body: bytes | None = None
    metrics_scrapes: int = 0
    extra_in_server: int = 0
    load_endpoint: bool = True
    in_progress: int = 0
    _released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        """Let every held request (mode ``hold``) answer, now and from now on."""
        self._released.set()

    def metrics_text(self) -> bytes:
        running = min(self.in_progress, self.max_num_seqs) + self.extra_running
        waiting = max(self.in_progress - self.max_num_seqs, 0) + self.extra_waiting
        labels = f'{{engine="0",model_name="{self.model}"}}'
        return "".join(
            f"# HELP {name} {doc}\n# TYPE {name} gauge\n{name}{labels} {float(value)}\n"
            for name, doc, value in (
                ("vllm:num_requests_running", "Number of requests in model execution batches.", running),
                ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting),
                ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", 0),
            )
        ).encode()

    @property
    def aborted(self) -> int:
        return len(self.aborts)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> Response:
            self.health_checks += 1
            return Response(status_code=200 if self.healthy else 503)

        @app.get("/metrics")
        async def metrics() -> Response:
            self.metrics_scrapes += 1
            body = self.metrics_body if self.metrics_body is not None else self.metrics_text()
            return Response(body, media_type="text/plain; version=0.0.4")

        @app.get("/load")
        async def load() -> Response:
            if not self.load_endpoint:
                return Response(status_code=404)
            total = self.in_progress + self.extra_running + self.extra_waiting + self.extra_in_server
            return JSONResponse({"server_load": total})

        @app.get("/v1/models")
        async def models() -> dict:
            card: dict = {"id": self.model, "object": "model"}
            if self.max_model_len is not None:
                card["max_model_len"] = self.max_model_len
            return {"object": "list", "data": [card]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            self.bodies.append(body)
            if body.get("stream"):  # counted in progress by the stream itself, while it runs
                return await self._answer(request, body)
            self.in_progress += 1
            try:
                return await self._answer(request, body)
            finally:
                self.in_progress -= 1

        return app

    async def _answer(self, request: Request, body: dict) -> Response:
        if self.mode == "status":
            if self.error_body is not None:
                return Response(
                    self.error_body, status_code=self.status, headers=self.headers, media_type="application/json"
                )
            return JSONResponse(
                {"error": {"message": "engine says no", "type": "x", "param": None, "code": self.status}},
                status_code=self.status,
                headers=self.headers,
            )
        if self.mode == "hang":
            while not await request.is_disconnected():
                await asyncio.sleep(0.02)
            self.aborts.append("before_headers")
            return Response(status_code=499)
        if body.get("stream"):
            return _ScriptedStream(self, self._raw() if self.mode == "raw" else self._events())
        if self.mode == "hold":
            while not self._released.is_set():
                if await request.is_disconnected():
                    self.aborts.append("before_headers")
                    return Response(status_code=499)
                await asyncio.sleep(0.01)
        self.completed += 1
        return JSONResponse(_completion(self.model, "hello from fake"))

    async def _stall(self, sent: int) -> None:
        if self.stall_after is not None and sent >= self.stall_after:
            await asyncio.Event().wait()  # until the client leaves (the task is cancelled)

    async def _raw(self) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self.raw_chunks):
            await self._stall(i)
            self._die(i)
            yield chunk
            await asyncio.sleep(self.event_delay_s)
        await self._stall(len(self.raw_chunks))

    def _die(self, sent: int) -> None:
        if self.die_after is not None and sent >= self.die_after:
            raise RuntimeError("engine killed mid-stream")

    async def _events(self) -> AsyncIterator[bytes]:
        for i in range(self.stream_events):
            await self._stall(i)
            self._die(i)
            if self.mode == "break_stream" and i == 2:
                raise RuntimeError("engine died mid-stream")
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "model": self.model,
                "choices": [
                    {"index": 0, "delta": {"content": f"t{i} " + "x" * self.event_padding}, "finish_reason": None}
                ],
            }
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            await asyncio.sleep(self.event_delay_s)
        await self._stall(self.stream_events)
        yield b"data: [DONE]\n\n"


class _ScriptedStream(Response):
    """An SSE answer that notices the client leaving at any point, silent or not (records the stage)."""

    def __init__(self, engine: FakeEngine, chunks: AsyncIterator[bytes]) -> None:
        super().__init__()
        self._engine, self._chunks, self._sent = engine, chunks, 0

    async def _pump(self, send: Send, left: asyncio.Future[None]) -> None:
        async for chunk in self._chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self._sent += 1
            await asyncio.sleep(0)  # uvicorn's send() to a closed connection returns at once, silently:
            if left.done():  # let the watcher see the client leave
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._engine.completed += 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})

        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        watch = asyncio.ensure_future(gone())
        pump = asyncio.ensure_future(self._pump(send, watch))
        self._engine.in_progress += 1
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._engine.in_progress -= 1
        if watch.done():
            pump.cancel()
            self._engine.aborts.append("streaming" if self._sent else "before_first_event")
            return
        watch.cancel()
        pump.result()  # an engine that "dies" raises: uvicorn then drops the connection mid-body


def _completion(model: str, text: str) -> dict:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }

"""A tiny, scriptable, misbehaving engine (for failure-path unit tests) and a way to serve ASGI apps in a thread."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server.launcher import free_port


@contextmanager
def serve(app, port: int | None = None) -> Iterator[str]:
    """Run ``app`` with uvicorn in a daemon thread (lifespan included); yields its base URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=1)
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
    ok | status (answer ``status``) | hang (never answer) | break_stream (die after 2 SSE events)."""

    model: str = "fake-model"
    mode: str = "ok"
    status: int = 500
    healthy: bool = True
    stream_events: int = 3
    event_delay_s: float = 0.0
    bodies: list[dict] = field(default_factory=list)
    aborted: int = 0
    completed: int = 0

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> Response:
            return Response(status_code=200 if self.healthy else 503)

        @app.get("/v1/models")
        async def models() -> dict:
            return {"object": "list", "data": [{"id": self.model, "object": "model"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            self.bodies.append(body)
            if self.mode == "status":
                return JSONResponse({"error": {"message": "engine says no", "type": "x", "param": None,
                                               "code": self.status}}, status_code=self.status)
            if self.mode == "hang":
                while not await request.is_disconnected():
                    await asyncio.sleep(0.02)
                self.aborted += 1
                return Response(status_code=499)
            if body.get("stream"):
                return StreamingResponse(self._events(), media_type="text/event-stream")
            self.completed += 1
            return JSONResponse(_completion(self.model, "hello from fake"))

        return app

    async def _events(self):
        try:
            for i in range(self.stream_events):
                if self.mode == "break_stream" and i == 2:
                    raise RuntimeError("engine died mid-stream")
                chunk = {"id": "c", "object": "chat.completion.chunk", "model": self.model,
                         "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(self.event_delay_s)
            yield "data: [DONE]\n\n"
            self.completed += 1
        except asyncio.CancelledError:
            self.aborted += 1
            raise


def _completion(model: str, text: str) -> dict:
    return {
        "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }

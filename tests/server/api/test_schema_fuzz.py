"""Schema-driven fuzzing of the gateway (schemathesis): valid and invalid requests generated from the gateway's own
OpenAPI schema, sent over HTTP to a real gateway with a scripted fake engine behind it.

Whatever arrives, the gateway answers below 500, and every 4xx is OpenAI's error shape. Seeded (``deterministic``),
so a run is reproducible; the number of cases per operation is ``CASES`` (positive and negative modes each).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from server.api.app import create_app
from server.config import load_settings
from tests.support.fakes import FakeEngine, serve

CASES = 250
ENGINE_MODEL = "fake-model"

schema = schemathesis.openapi.from_dict(create_app(load_settings()).openapi())
schema.config.generation.update(modes=["positive", "negative"], deterministic=True, max_examples=CASES)


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    engine = FakeEngine(model=ENGINE_MODEL)
    with serve(engine.app()) as engine_url:
        settings_ = load_settings(engine_urls=[engine_url], health_interval_s=0.5)
        with serve(create_app(settings_)) as url:
            yield url


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def _check_error_shape(response: requests.Response) -> None:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
def test_gateway_never_fails_on_client_input(case, gateway_url: str, http: requests.Session) -> None:
    response = case.call(base_url=gateway_url, session=http, timeout=30)
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        _check_error_shape(response)

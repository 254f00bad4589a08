"""Load from the engines themselves: /metrics parsing, the load estimate, admission by the engine's capacity,
and two gateways in front of the same engines balancing by what the engines report (scripted fake engines)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client import generate_latest

from server.config import DEFAULT_MAX_NUM_SEQS, load_settings
from server.errors import Overloaded
from server.metrics import Metrics
from server.relay.upstream import engine_session
from server.routing.load import EngineLoad, Report
from server.routing.load_reports import MetricsTooLarge, read_report
from server.routing.pool import EnginePool
from tests.support.waiting import wait_until

VLLM_METRICS = b"""\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 1234.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 5.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
# HELP vllm:num_requests_waiting_by_reason Waiting requests by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 99.0
"""


async def lines(body: bytes) -> AsyncIterator[bytes]:
    for line in body.splitlines(keepends=True):
        yield line


@pytest.fixture
async def session():
    async with engine_session() as s:
        yield s


# ------------------------------------------------------------------ parsing


async def test_report_sums_label_sets_and_ignores_lookalike_names() -> None:
    assert await read_report(lines(VLLM_METRICS), 1 << 20) == (4, 5)


async def test_report_reading_stops_after_both_families() -> None:
    rest = b'vllm:num_requests_running{engine="9"} 1000.0\n' * 10  # would change the sum if read
    body = VLLM_METRICS + b"# HELP other x\n" + rest
    assert await read_report(lines(body), len(VLLM_METRICS) + 100) == (4, 5)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"vllm:num_requests_running 1\n",  # no waiting family
        b"vllm:num_requests_running 1\nvllm:num_requests_waiting NaN\n",
        b"vllm:num_requests_running 1\nvllm:num_requests_waiting -1\n",
        b"vllm:num_requests_running 1\nvllm:num_requests_waiting +Inf\n",
        b'vllm:num_requests_running{a="}"} x\nvllm:num_requests_waiting 0\n',
        b"vllm:num_requests_running\nvllm:num_requests_waiting 0\n",
        b"<html>not metrics</html>\n",
    ],
    ids=["empty", "missing", "nan", "negative", "inf", "garbage", "no-value", "html"],
)
async def test_report_is_none_unless_both_counts_are_sane(body: bytes) -> None:
    assert await read_report(lines(body), 1 << 20) is None


async def test_report_without_labels_and_with_timestamp() -> None:
    body = b"vllm:num_requests_running 2 1700000000000\nvllm:num_requests_waiting 7e0\n"
    assert await read_report(lines(body), 1 << 20) == (2, 7)


async def test_report_reading_is_bounded() -> None:
    body = b"# padding " + b"x" * 5000 + b"\n" + VLLM_METRICS
    with pytest.raises(MetricsTooLarge):
        await read_report(lines(body), 4096)


# ------------------------------------------------------------------ estimate


def test_estimate_corrects_the_report_by_own_traffic_since() -> None:
    load = EngineLoad()
    for _ in range(3):
        load.start(0.0)
    assert load.estimate(0.0, 5.0) == 3  # no report: own outstanding
    load.observe(Report(running=10, waiting=2, at=0.0, sent=load.sent, done=load.done), 1.0, 5.0)  # incl. our 3
    assert load.estimate(1.0, 5.0) == 12
    load.start(0.0)
    load.start(0.0)
    load.finish(0.0)
    assert load.estimate(1.0, 5.0) == 13  # +2 sent, −1 finished since the report
    assert load.estimate(5.1, 5.0) == 4  # the report is stale: own outstanding only
    for _ in range(4):
        load.finish(0.0)
    load.observe(Report(running=0, waiting=0, at=6.0, sent=load.sent, done=load.done), 0.2, 5.0)
    load.start(0.0)
    assert load.estimate(6.0, 5.0) == 1  # after a stale report the past is forgotten, whatever the smoothing


def test_other_gateways_requests_are_smoothed_over_reports() -> None:
    """A snapshot of other gateways' requests moves the estimate by its weight only: transients fade, a lasting
    imbalance counts in full after a few reports."""
    load = EngineLoad()
    load.observe(Report(running=0, waiting=0, at=0.0, sent=0, done=0), 0.5, 5.0)
    load.observe(Report(running=8, waiting=0, at=1.0, sent=0, done=0), 0.5, 5.0)
    assert load.estimate(1.0, 5.0) == 4
    for at in (2.0, 3.0, 4.0, 5.0):
        load.observe(Report(running=8, waiting=0, at=at, sent=0, done=0), 0.5, 5.0)
    assert load.estimate(5.0, 5.0) == 7  # 7.75
    load.forget()
    assert load.estimate(5.0, 5.0) == 0


def test_request_seconds_integrate_outstanding_over_time() -> None:
    """Little's law from the gateway's side: request-seconds over a span are its mean requests in flight."""
    load = EngineLoad()
    assert load.start(10.0) == 0.0  # nothing was in flight before
    assert load.start(11.0) == 1.0  # one request for 1 s
    assert load.finish(13.0) == 4.0  # two for 2 s
    assert load.finish(14.0) == 1.0
    assert load.start(20.0) == 0.0  # idle in between
    assert load.request_seconds == 6.0


def test_estimate_never_counts_fewer_than_own_outstanding() -> None:
    load = EngineLoad()
    load.observe(Report(running=0, waiting=0, at=0.0, sent=0, done=0), 1.0, 5.0)  # asked before ours arrived
    for _ in range(5):
        load.start(0.0)
    assert load.estimate(0.0, 5.0) == 5
    load.observe(Report(running=1, waiting=0, at=0.0, sent=5, done=0), 1.0, 5.0)  # a stale-ish engine count
    assert load.estimate(0.0, 5.0) == 5


# ------------------------------------------------------------------ settings


def test_capacity_is_the_batch_plus_the_engine_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALM_MAX_NUM_SEQS", raising=False)
    monkeypatch.delenv("ALM_MAX_INFLIGHT_PER_ENGINE", raising=False)
    monkeypatch.delenv("ALM_ENGINE_MAX_WAITING", raising=False)
    assert load_settings().engine_capacity == DEFAULT_MAX_NUM_SEQS + 8
    monkeypatch.setenv("ALM_MAX_NUM_SEQS", "48")  # the engine contract's variable (alm/engine.py)
    monkeypatch.setenv("ALM_ENGINE_MAX_WAITING", "6")
    assert load_settings().engine_capacity == 54
    monkeypatch.setenv("ALM_MAX_INFLIGHT_PER_ENGINE", "5")  # an explicit bound wins
    assert load_settings().engine_capacity == 5


# ------------------------------------------------------------------ pool + fake engines


def exported(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


async def test_health_round_reads_the_engines_load(start_fake, session) -> None:
    fake, url = start_fake(model="m", extra_running=3, extra_waiting=2)
    metrics = Metrics()
    pool = EnginePool(load_settings(engine_urls=[url]), session, metrics)
    name = pool.engines[url].name
    assert f'alm_gateway_engine_waiting_requests{{engine="{name}"}} 0.0' in exported(metrics)  # from start-up
    await pool.check_all()
    engine = pool.engines[url]
    assert fake.metrics_scrapes == 1 and pool.load(engine) == 5
    text = exported(metrics)
    assert f'alm_gateway_engine_running_requests{{engine="{name}"}} 3.0' in text
    assert f'alm_gateway_engine_waiting_requests{{engine="{name}"}} 2.0' in text
    assert f'alm_gateway_engine_load_requests{{engine="{name}"}} 5.0' in text
    assert (await pool.acquire("m")) is engine and pool.load(engine) == 6
    fake.healthy = False
    await pool.check_all()
    await pool.check_all()
    assert not engine.healthy and pool.load(engine) == 1  # the report went with its health
    assert f'alm_gateway_engine_running_requests{{engine="{name}"}} 0.0' in exported(metrics)


async def test_requests_in_the_api_server_count_through_load(start_fake, session) -> None:
    """Requests still in vLLM's pre-/post-processing are in ``/load`` but not in the scheduler's gauges."""
    busy, busy_url = start_fake(model="m", extra_running=1, extra_in_server=5)
    _, idle_url = start_fake(model="m", extra_running=2)
    settings = load_settings(engine_urls=[busy_url, idle_url], engine_load_smoothing=1.0)  # each report in full
    pool = EnginePool(settings, session, Metrics())
    await pool.check_all()
    engine = pool.engines[busy_url]
    assert engine.server_load is True and pool.load(engine) == 6 and pool.load(pool.engines[idle_url]) == 2
    assert (await pool.acquire("m")).url == idle_url
    busy.extra_in_server = 0  # an engine started without load tracking answers 0: its gauges still count
    await pool.check_all()
    assert pool.load(engine) == 1


async def test_an_engine_without_load_endpoint_is_routed_by_its_gauges(start_fake, session) -> None:
    _, url = start_fake(model="m", extra_running=3, load_endpoint=False)
    pool = EnginePool(load_settings(engine_urls=[url]), session, Metrics())
    await pool.check_all()
    await pool.check_all()
    engine = pool.engines[url]
    assert engine.server_load is False and pool.load(engine) == 3


@pytest.mark.parametrize("body", [b"no metrics here\n", b"# " + b"x" * 10_000 + b"\n"], ids=["garbage", "too-large"])
async def test_an_engine_without_readable_metrics_stays_healthy_on_own_counts(start_fake, session, body) -> None:
    fake, url = start_fake(model="m", metrics_body=body, load_endpoint=False)
    pool = EnginePool(load_settings(engine_urls=[url], engine_metrics_max_bytes=4096), session, Metrics())
    await pool.check_all()
    engine = pool.engines[url]
    assert fake.metrics_scrapes == 1 and engine.healthy and engine.load.report is None
    await pool.acquire("m")
    assert pool.load(engine) == 1


async def test_load_metrics_can_be_turned_off(start_fake, session) -> None:
    fake, url = start_fake(model="m", extra_running=50)
    pool = EnginePool(load_settings(engine_urls=[url], engine_load_metrics=False), session, Metrics())
    await pool.check_all()
    assert fake.metrics_scrapes == 0 and pool.load(pool.engines[url]) == 0


async def test_admission_counts_what_the_engine_reports_then_429(start_fake, session) -> None:
    """The engine is full with another gateway's requests: this one queues (bounded), then 429s."""
    fake, url = start_fake(model="m", extra_running=4, extra_waiting=2)
    pool = EnginePool(
        load_settings(engine_urls=[url], max_num_seqs=4, engine_max_waiting=2, max_queue=1, retry_after_s=2),
        session,
        Metrics(),
    )
    await pool.check_all()
    engine = pool.engines[url]
    assert engine.capacity == 6 and pool.load(engine) == 6
    waiter = asyncio.create_task(pool.acquire("m"))
    while pool.waiting == 0:
        await asyncio.sleep(0)
    with pytest.raises(Overloaded) as info:
        await pool.acquire("m")
    assert info.value.status == 429 and info.value.headers() == {"Retry-After": "2"}
    fake.extra_waiting = 1  # one of the other gateway's requests finished
    await pool.check_all()  # the report wakes the waiter
    assert (await asyncio.wait_for(waiter, 5)) is engine and pool.waiting == 0
    assert pool.load(engine) == 6


async def test_routing_prefers_the_engine_with_less_reported_load(start_fake, session) -> None:
    a, a_url = start_fake(model="m", extra_running=3)
    _, b_url = start_fake(model="m")
    pool = EnginePool(load_settings(engine_urls=[a_url, b_url]), session, Metrics())
    await pool.check_all()
    picked = [(await pool.acquire("m")).url for _ in range(5)]
    assert picked == [b_url, b_url, b_url, a_url, b_url]  # ties go to the engine picked less often
    a.extra_running = 0
    await pool.check_all()  # a reports 1 (ours), b is still at our 4
    assert (await pool.acquire("m")).url == a_url


# ------------------------------------------------------------------ two gateways, two engines


def post_chat(gateway: str) -> int:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(gateway + "/v1/chat/completions", json=body, timeout=30).status_code


@pytest.mark.parametrize("load_metrics", [True, False], ids=["engine-load", "own-counts-only"])
def test_two_gateways_balance_by_the_engines_load(start_fake, start_gateway, load_metrics: bool) -> None:
    """Gateway 1's traffic keeps engine A busy; gateway 2 sees it in A's report and sends its requests to B.
    Counting only its own requests (the control), gateway 2 alternates and piles onto the busy engine."""
    a, a_url = start_fake(model="m", mode="hold")
    b, b_url = start_fake(model="m", mode="hold", healthy=False)
    gw1 = start_gateway([a_url, b_url], engine_load_metrics=load_metrics)  # B is down when gateway 1 starts
    with ThreadPoolExecutor(8) as pool:
        first = [pool.submit(post_chat, gw1) for _ in range(3)]
        wait_until(lambda: a.in_progress == 3)
        b.healthy = True
        gw2 = start_gateway([a_url, b_url], engine_load_metrics=load_metrics)
        if load_metrics:
            scraped = httpx.get(gw2 + "/metrics").text
            assert f'alm_gateway_engine_running_requests{{engine="{a_url[7:]}"}} 3.0' in scraped
        second = []
        for i in range(3):  # one at a time, so each choice sees the previous one
            second.append(pool.submit(post_chat, gw2))
            wait_until(lambda n=i: a.in_progress + b.in_progress == 4 + n)
        spread = (a.in_progress, b.in_progress)
        a.release()
        b.release()
        assert [f.result() for f in first + second] == [200] * 6
    assert spread == ((3, 3) if load_metrics else (5, 1))

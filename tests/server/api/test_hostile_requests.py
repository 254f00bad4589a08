"""Hostile request bodies against a real gateway (fake engine behind it), sent as raw HTTP: strict content parts,
refused engine-internal fields, no 500 on malformed JSON, JSON amplification, body-read deadline, the budget of
large bodies, transcription form errors, and the published OpenAPI schema agreeing with what is accepted."""

from __future__ import annotations

import time

import httpx
import jsonschema
import pytest

from server.api.app import create_app
from server.config import load_settings
from server.guards.fields import DENIED_FIELDS
from tests.support.audio_synth import audio_part, chat_body, encode, tone
from tests.support.hostile import RawClient, json_bytes

M = "fake-model"
CHAT = "/v1/chat/completions"
URL = {"url": "http://169.254.169.254/latest/meta-data"}
WAV = audio_part("wav", 0.5)["input_audio"]
ALLOWED_PART_KEYS = {
    "text": {"type", "text"},
    "input_audio": {"type", "input_audio"},
    "audio_url": {"type", "audio_url"},
}


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def post_raw(gw: str, raw: bytes, **kwargs) -> httpx.Response:
    return httpx.post(gw + CHAT, content=raw, headers={"content-type": "application/json"}, timeout=60, **kwargs)


def user(*parts: object, role: str = "user") -> dict:
    return {"model": M, "messages": [{"role": role, "content": list(parts)}], "max_tokens": 4}


@pytest.fixture
def gateway(start_fake, start_gateway):
    fake, url = start_fake()
    return fake, start_gateway([url])


@pytest.mark.parametrize(("body", "param", "code"), [
    (user({"audio_url": URL}), "messages[0].content[0].type", "invalid_content_part"),
    (user({"type": None, "audio_url": URL}), "messages[0].content[0].type", "invalid_content_part"),
    (user({"type": [], "audio_url": URL}), "messages[0].content[0].type", "invalid_content_part"),
    (user({"type": {}, "input_audio": WAV}), "messages[0].content[0].type", "invalid_content_part"),
    (user({"type": 1, "text": "x"}), "messages[0].content[0].type", "invalid_content_part"),
    (user({"type": "image_url", "image_url": URL}), "messages[0].content[0].type", "unsupported_content_part"),
    (user({"type": "video_url", "video_url": URL}), "messages[0].content[0].type", "unsupported_content_part"),
    (user({"type": "prompt_embeds", "data": "AAAA"}), "messages[0].content[0].type", "unsupported_content_part"),
    (user({"type": "text", "text": "hi"}, {"type": "text", "text": "x", "audio_url": URL}),
     "messages[0].content[1].audio_url", "invalid_content_part"),
    (user({"type": "text", "text": "x", "image_url": URL}), "messages[0].content[0].image_url", "invalid_content_part"),
    (user({"type": "text", "text": "x", "file": {"file_id": "f"}}), "messages[0].content[0].file",
     "invalid_content_part"),
    (user({"type": "input_audio", "input_audio": WAV, "uuid": "u1"}), "messages[0].content[0].uuid",
     "invalid_content_part"),
    (user({"type": "input_audio", "input_audio": {**WAV, "url": "x"}}), "messages[0].content[0].input_audio.url",
     None),
    (user({"type": "audio_url", "audio_url": {**URL, "uuid": "u"}}), "messages[0].content[0].audio_url.uuid", None),
    (user({"type": "text", "text": 5}), "messages[0].content[0].text", None),
    (user("plain string part"), "messages[0].content[0]", "invalid_content_part"),
    (user({"type": "input_audio", "input_audio": WAV}, role="assistant"), "messages[0].content[0].type",
     "unsupported_content_part"),
    (user({"type": "text", "text": "r", "input_audio": WAV}, role="tool"), "messages[0].content[0].input_audio",
     "invalid_content_part"),
    (user({"type": "text", "text": "x"}, role="ipython"), "messages[0].role", None),
    ({"model": M, "messages": [{"role": "user", "content": {"audio_url": URL}}]}, "messages[0].content", None),
])  # fmt: skip
def test_content_parts_are_strict(gateway, body: dict, param: str, code: str | None) -> None:
    fake, gw = gateway
    resp = httpx.post(gw + CHAT, json=body)
    assert resp.status_code == 400, resp.text
    err = error_of(resp)
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert err["code"] == (code or "invalid_request")
    assert fake.bodies == []  # nothing reached the engine


@pytest.mark.parametrize("field", sorted(DENIED_FIELDS))
def test_engine_internal_fields_are_refused(gateway, field: str) -> None:
    fake, gw = gateway
    resp = httpx.post(gw + CHAT, json=chat_body(M, **{field: {"x": "file:///etc/passwd"}}))
    assert resp.status_code == 400 and error_of(resp)["param"] == field
    assert error_of(resp)["code"] == "unsupported_parameter" and fake.bodies == []


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"chat_template": "{{ 7*7 }}"}, "chat_template_kwargs.chat_template"),
        ({"tools": []}, "chat_template_kwargs.tools"),
        ({"x": {"nested": 1}}, "chat_template_kwargs.x"),
    ],
)
def test_template_kwargs_cannot_replace_what_was_validated(gateway, kwargs: dict, param: str) -> None:
    fake, gw = gateway
    resp = httpx.post(gw + CHAT, json=chat_body(M, chat_template_kwargs=kwargs))
    assert resp.status_code == 400 and error_of(resp)["param"] == param and fake.bodies == []


def test_engine_gets_only_validated_parts(gateway) -> None:
    fake, gw = gateway
    body = user({"type": "text", "text": "a 😀"}, audio_part("wav", 0.5), {"type": "text", "text": "b"})
    body["messages"].insert(0, {"role": "system", "content": "be brief"})
    body["chat_template_kwargs"] = {"enable_thinking": False}
    assert httpx.post(gw + CHAT, json=body).status_code == 200
    (sent,) = fake.bodies
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}
    for message in sent["messages"]:
        for part in message["content"] if isinstance(message["content"], list) else []:
            assert set(part) == ALLOWED_PART_KEYS[part["type"]]
    assert sent["messages"][1]["content"][0]["text"] == "a 😀"
    assert set(sent["messages"][1]["content"][1]["input_audio"]) == {"data", "format"}


# --------------------------------------------------------------------------- malformed JSON: 400, never 500

HELLO = b'{"model": "fake-model", "messages": [{"role": "user", "content": "%s"}]'


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (HELLO % b"hi" + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "json_too_deep"),
        (HELLO % b"hi" + b', "x": ' + b"[" * 80 + b"]" * 80 + b"}", "x" + "[0]" * 63, "json_too_deep"),
        (HELLO % rb"\ud800" + b"}", "messages[0].content", "invalid_unicode"),
        (HELLO % b"\xed\xa0\x80" + b"}", "messages[0].content", "invalid_unicode"),
        (HELLO % b"hi" + rb', "\udfff": 1}', None, "invalid_unicode"),
        (HELLO % b"hi" + rb', "k": {"\udfff": 1}}', "k", "invalid_unicode"),
        (HELLO % b"hi" + b', "temperature": NaN}', "temperature", "invalid_number"),
        (HELLO % b"hi" + b', "top_p": -Infinity}', "top_p", "invalid_number"),
        (HELLO % b"hi" + b', "temperature": 1e999}', "temperature", "invalid_number"),
        (HELLO % b"hi" + b', "seed": ' + b"9" * 5000 + b"}", None, "invalid_json"),
        (b'{"model": "\xff"}', None, "invalid_json"),
        (b'{"model": ', None, "invalid_json"),
        (b"[]", None, "invalid_json"),
    ],
)
def test_malformed_json_is_400(gateway, raw: bytes, param: str | None, code: str) -> None:
    fake, gw = gateway
    resp = post_raw(gw, raw)
    assert resp.status_code == 400, resp.text
    err = error_of(resp)
    assert (err["param"], err["code"]) == (param, code) and fake.bodies == []


def test_valid_surrogate_pair_reaches_the_engine_as_utf8(gateway) -> None:
    fake, gw = gateway
    assert post_raw(gw, HELLO % rb"\ud83d\ude00" + b"}").status_code == 200
    assert fake.bodies[0]["messages"][0]["content"] == "😀"


# --------------------------------------------------------------------------- amplification and size


def test_many_small_values_are_refused_before_parsing(gateway) -> None:
    fake, gw = gateway
    spam = b"[" + b"{}," * 3_000_000 + b"{}]"  # 9 MB: once +140 MB of dicts
    resp = post_raw(gw, HELLO % b"hi" + b', "x": ' + spam + b"}")
    assert resp.status_code == 413 and error_of(resp)["code"] == "too_many_json_values" and fake.bodies == []


def test_text_beyond_the_text_limit_is_413(start_fake, start_gateway) -> None:
    fake, url = start_fake()
    gw = start_gateway([url], max_text_body_bytes=64 * 1024)
    resp = httpx.post(gw + CHAT, json=user({"type": "text", "text": "a" * 70_000}))
    assert resp.status_code == 413 and error_of(resp)["code"] == "text_too_large" and fake.bodies == []
    spam = [{}] * 20_000  # a small clip does not buy room for a value flood
    resp = httpx.post(gw + CHAT, json={**user(audio_part("wav", 0.5)), "x": spam})
    assert resp.status_code == 413 and error_of(resp)["code"] == "too_many_json_values"


def test_clips_do_not_count_as_text(start_fake, start_gateway) -> None:
    """Four clips near the byte limit in one body far above the text limit are accepted."""
    fake, url = start_fake()
    gw = start_gateway([url], max_text_body_bytes=64 * 1024, max_audio_bytes=2 * 1024 * 1024)
    parts = [audio_part("wav", 60.0 + i) for i in range(4)]  # 1.9-2.0 MB each
    body = json_bytes(user(*parts, {"type": "text", "text": "which is longest?"}))
    assert len(body) > 40 * 64 * 1024
    assert post_raw(gw, body).status_code == 200 and len(fake.bodies) == 1


# --------------------------------------------------------------------------- slow and concurrent bodies


@pytest.mark.parametrize("trickle", [True, False])
def test_slow_body_is_cut_off_with_408(start_fake, start_gateway, trickle: bool) -> None:
    fake, url = start_fake()
    gw = start_gateway([url], body_read_timeout_s=0.5, body_rate_window_s=0.5, body_min_rate_bytes_s=100)
    client = RawClient(gw)
    try:
        client.start(CHAT, 10_000, b'{"model"')
        if trickle:
            assert not client.trickle(b": " * 500, 0.05)  # 20 B/s: the server hangs up
        status, body = client.response()
    finally:
        client.close()
    assert status == 408 and body["error"]["code"] == "body_read_timeout" and fake.bodies == []
    assert httpx.post(gw + CHAT, json=chat_body(M)).status_code == 200  # prompt clients are unaffected


def test_large_bodies_in_flight_are_bounded(start_fake, start_gateway) -> None:
    _, url = start_fake()
    limits = {"max_audio_bytes": 64 * 1024, "max_text_body_bytes": 64 * 1024}
    budget = load_settings(**limits).max_body_bytes + 50_000
    gw = start_gateway([url], max_body_bytes_in_flight=budget, retry_after_s=3, **limits)
    holder = RawClient(gw)
    try:
        # Sends most of the budget and stalls: bytes received are held, bytes only declared are not.
        holder.start(CHAT, budget - 90_000, b'{"model": "' + b"a" * (budget - 100_000))
        time.sleep(0.5)
        big = user({"type": "text", "text": "a" * 40_000}, *[audio_part("wav", 1.5)] * 3)
        resp = httpx.post(gw + CHAT, json=big)
        assert resp.status_code == 429 and resp.headers["retry-after"] == "3"
        assert error_of(resp)["code"] == "too_many_large_bodies"
        assert httpx.post(gw + CHAT, json=chat_body(M)).status_code == 200  # small bodies pass
    finally:
        holder.close()
    time.sleep(0.3)  # the server notices the closed connection and releases its share
    assert httpx.post(gw + CHAT, json=big).status_code == 200


def test_declared_but_unsent_bodies_hold_no_budget(start_fake, start_gateway) -> None:
    _, url = start_fake()
    limits = {"max_audio_bytes": 64 * 1024, "max_text_body_bytes": 64 * 1024}
    budget = load_settings(**limits).max_body_bytes + 50_000
    gw = start_gateway([url], max_body_bytes_in_flight=budget, **limits)
    idle = [RawClient(gw), RawClient(gw)]
    try:
        for client in idle:  # headers only, each declaring nearly the whole budget
            client.start(CHAT, budget - 100_000)
        time.sleep(0.2)
        big = user({"type": "text", "text": "a" * 40_000}, *[audio_part("wav", 1.5)] * 3)
        assert httpx.post(gw + CHAT, json=big).status_code == 200
    finally:
        for client in idle:
            client.close()


def test_unauthenticated_bodies_are_refused_before_they_are_sized(start_fake, start_gateway) -> None:
    _, url = start_fake()
    limits = {"max_audio_bytes": 64 * 1024, "max_text_body_bytes": 64 * 1024}
    budget = load_settings(**limits).max_body_bytes + 50_000
    gw = start_gateway([url], api_keys=["sk-test"], max_body_bytes_in_flight=budget, **limits)
    auth = {"authorization": "Bearer sk-test"}
    big = user({"type": "text", "text": "a" * 40_000}, *[audio_part("wav", 1.5)] * 3)
    clients = [RawClient(gw), RawClient(gw)]
    try:
        clients[0].start(CHAT, 10 * budget)  # over the size limit, but 401 comes first
        clients[1].start(CHAT, budget - 90_000)
        for client in clients:
            status, body = client.response()
            assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert httpx.post(gw + CHAT, json=big, headers=auth).status_code == 200
    finally:
        for client in clients:
            client.close()


# --------------------------------------------------------------------------- transcriptions


def test_transcription_upload_over_the_limit_is_413(start_fake, start_gateway) -> None:
    fake, url = start_fake()
    gw = start_gateway([url], max_audio_bytes=64 * 1024)
    path = gw + "/v1/audio/transcriptions"
    declared = httpx.post(path, files={"file": ("a.wav", b"\0" * (2 * 1024 * 1024))}, data={"model": M})
    assert declared.status_code == 413 and error_of(declared)["code"] == "payload_too_large"
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\ncontent-disposition: form-data; name="model"\r\n\r\n{M}\r\n--{boundary}\r\n'
        f'content-disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    ).encode()
    chunked = httpx.post(
        path,
        content=iter([head] + [b"\0" * 65536] * 32),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert chunked.status_code == 413 and error_of(chunked)["code"] == "payload_too_large"
    just_over = httpx.post(path, files={"file": ("a.wav", b"\0" * (65 * 1024))}, data={"model": M})
    assert just_over.status_code == 413 and error_of(just_over)["param"] == "file"
    assert fake.bodies == []


@pytest.mark.parametrize(
    ("files", "data", "param"),
    [
        ({"other": ("a.wav", b"RIFF")}, {"model": M}, "file"),
        ({"other": ("a.wav", b"RIFF")}, {"model": M, "file": "not a file"}, "file"),
        ({"file": ("a.wav", b"RIFF")}, {}, "model"),
        ({"file": ("a.wav", b"RIFF")}, {"model": M, "temperature": "hot"}, "temperature"),
        ({"file": ("a.wav", b"RIFF")}, {"model": M, "response_format": "srt"}, "response_format"),
    ],
)
def test_transcription_form_errors_name_the_field(gateway, files, data, param: str) -> None:
    fake, gw = gateway
    resp = httpx.post(gw + "/v1/audio/transcriptions", files=files, data=data)
    assert resp.status_code == 400 and error_of(resp)["param"] == param and fake.bodies == []


def test_transcription_form_fields_with_lone_surrogates_are_400(gateway) -> None:
    fake, gw = gateway
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\ncontent-disposition: form-data; name="model"\r\n\r\n{M}\r\n'
            f'--{boundary}\r\ncontent-disposition: form-data; name="prompt"\r\n\r\n+2AA-\r\n'
            f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        ).encode()
        + encode(tone(1.0), 16_000, "wav")
        + f"\r\n--{boundary}--\r\n".encode()
    )
    resp = httpx.post(
        gw + "/v1/audio/transcriptions",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}; charset=utf-7"},
    )
    assert resp.status_code == 400 and fake.bodies == []
    assert error_of(resp)["code"] == "invalid_unicode" and error_of(resp)["param"] == "prompt"


@pytest.mark.parametrize(
    "kwargs", [{"json": {"model": M}}, {"data": {"model": M}}, {"content": b"model=m", "headers": {"content-type": ""}}]
)
def test_transcription_without_multipart_is_415(gateway, kwargs: dict) -> None:
    """JSON, a urlencoded form (which a web page can send cross-site without a preflight) or no type at all."""
    fake, gw = gateway
    resp = httpx.post(gw + "/v1/audio/transcriptions", **kwargs)
    assert resp.status_code == 415 and error_of(resp)["code"] == "unsupported_media_type" and fake.bodies == []


def test_transcription_accepts_a_real_upload(gateway) -> None:
    fake, gw = gateway
    wav = encode(tone(1.0), 16_000, "wav")
    resp = httpx.post(
        gw + "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav)},
        data={"model": M, "temperature": "0.2", "timestamp_granularities[]": "segment"},
    )
    assert resp.status_code == 200 and fake.bodies[0]["temperature"] == 0.2


# --------------------------------------------------------------------------- OpenAPI


def _openapi() -> dict:
    return create_app(load_settings()).openapi()


def test_openapi_documents_the_request_bodies() -> None:
    paths = _openapi()["paths"]
    form = paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["file"] == {"type": "string", "format": "binary", "description": "The audio file."}
    assert set(form["required"]) == {"file", "model"}
    assert "4XX" in paths["/v1/models"]["get"]["responses"]
    errors = paths["/v1/chat/completions"]["post"]["responses"]["4XX"]["content"]["application/json"]["schema"]
    assert errors == {"$ref": "#/components/schemas/ErrorResponse"}


@pytest.mark.parametrize(
    "body",
    [
        chat_body(M),
        chat_body(M, audio_part("wav", 0.5)),
        user({"type": "text", "text": "x"}, role="tool"),
        user({"audio_url": URL}),
        user({"type": "text", "text": "x", "uuid": "u"}),
        user({"type": "text", "text": 1}),
        user({"type": "image_url", "image_url": URL}),
        {"model": M, "messages": []},
        {"messages": [{"role": "user"}]},
        {"model": M, "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
    ],
)
def test_openapi_schema_agrees_with_the_gateway(gateway, body: dict) -> None:
    """What the published schema accepts is accepted (200), what it refuses is a 400 — one source of truth."""
    _, gw = gateway
    schema = _openapi()["paths"][CHAT]["post"]["requestBody"]["content"]["application/json"]["schema"]
    documented = jsonschema.Draft202012Validator(schema).is_valid(body)
    assert httpx.post(gw + CHAT, json=body).status_code == (200 if documented else 400)

"""API keys and per-key limits, in process: the store keeps hashes only, the limiter behaves
like OpenAI's, and the gateway app answers 401 / 429 in OpenAI's shape with its headers.
Served, with Redis shared between limiters: tests/integration/test_auth.py."""

from __future__ import annotations

import asyncio
import json
import math
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest

from bentochain.api.app import create_app
from bentochain.security.access import Access
from bentochain.security.keys import (
    FileKeyStore,
    KeyProblem,
    KeyRecord,
    KeyRing,
    Limits,
    create,
    digest,
    revoke,
)
from bentochain.security.limits import InProcessLimiter, reset_header
from tests.unit.test_gateway_app import (
    CHAT,
    EMBED,
    LocalBackends,
    assert_openai_error,
    call,
    profile,
    with_openai,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counted:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.used: dict[str, int] = {}

    def request(self, key: str, outcome: str) -> None:
        self.requests.append((key, outcome))

    def tokens(self, key: str, count: int) -> None:
        self.used[key] = self.used.get(key, 0) + count


def record(**limits: int) -> KeyRecord:
    return KeyRecord(
        name="k", hash="h", prefix="bc-x", limits=Limits(**limits), created=datetime.now(UTC)
    )


# -- the store -------------------------------------------------------------------------------


def test_a_key_is_shown_once_and_stored_as_its_hash(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    key = create(store, "me", Limits(rpm=30))
    assert key.startswith("bc-") and len(key) > 40
    text = (tmp_path / "keys.json").read_text()
    assert key not in text and digest(key) in text
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    assert store.load()["me"].limits.rpm == 30
    with pytest.raises(KeyProblem, match="exists"):
        create(store, "me", Limits())
    with pytest.raises(KeyProblem, match="letters, digits"):
        create(store, "no spaces", Limits())
    with pytest.raises(KeyProblem, match="no key named"):
        revoke(store, "nobody")


def test_a_revoked_or_expired_key_stops_working_at_the_next_refresh(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    clock = Clock()
    ring = KeyRing(store, refresh_seconds=2.0, clock=clock)
    key = create(store, "me", Limits())
    old = create(store, "old", Limits(), expires_days=1, now=datetime.now(UTC) - timedelta(days=2))
    found = ring.find(key)
    assert found is not None and found.name == "me"
    assert ring.find(old) is None  # expired
    assert ring.find(key + "x") is None and ring.find("") is None
    revoke(store, "me")
    assert ring.find(key) is not None  # this worker has not re-read the store yet
    clock.now += 2.0
    assert ring.find(key) is None
    # A new key under a revoked one's name works.
    again = create(store, "me", Limits())
    clock.now += 2.0
    assert ring.find(again) is not None


# -- the limiter ------------------------------------------------------------------------------


def test_requests_per_minute_burst_to_the_limit_then_go_at_its_rate() -> None:
    clock = Clock()
    limiter = InProcessLimiter(clock=clock)
    key = record(rpm=30)

    async def scenario() -> list[Any]:
        answers = [await limiter.admit(key) for _ in range(31)]
        clock.now += 2.0  # 30 a minute: one every 2 s
        answers.append(await limiter.admit(key))
        return answers

    answers = asyncio.run(scenario())
    assert [a.admitted for a in answers] == [True] * 30 + [False, True]
    refused = answers[30]
    assert refused.reason == "requests" and refused.retry_after == pytest.approx(2.0)
    assert answers[0].state.remaining == 29 and answers[29].state.remaining == 0
    assert answers[29].state.reset_seconds == pytest.approx(60.0)
    assert (reset_header(0.02), reset_header(1.0), reset_header(360.0)) == ("20ms", "1s", "6m0s")


def test_tokens_are_reserved_then_settled_and_concurrency_is_bounded() -> None:
    clock = Clock()
    limiter = InProcessLimiter(clock=clock)
    key = record(tpm=1000, max_concurrent=1)

    async def scenario() -> list[Any]:
        first = await limiter.admit(key)
        second = await limiter.admit(key)  # one at a time
        reserved = await limiter.reserve(key, 800)
        short = await limiter.reserve(key, 300)  # 200 left
        settled = await limiter.settle(key, 800, 100)  # it used 100: 700 come back
        enough = await limiter.reserve(key, 300)
        huge = await limiter.reserve(key, 5000)  # more than a whole minute's worth
        await limiter.release(key)
        third = await limiter.admit(key)
        return [first, second, reserved, short, settled, enough, huge, third]

    first, second, reserved, short, settled, enough, huge, third = asyncio.run(scenario())
    assert first.admitted and not second.admitted and second.reason == "concurrent"
    assert reserved.admitted and reserved.state.remaining == 200
    assert not short.admitted and short.retry_after == pytest.approx(6.0)  # 100 at 1000/min
    assert settled.remaining == 900
    assert enough.admitted and enough.state.remaining == 600
    assert not huge.admitted and math.isinf(huge.retry_after)
    assert third.admitted


# -- the gateway --------------------------------------------------------------------------------


def keyed_app(engines: LocalBackends, tmp_path: Path, **limits: int) -> tuple[Any, str, Counted]:
    store = FileKeyStore(tmp_path / "keys.json")
    key = create(store, "team", Limits(**limits))
    metrics = Counted()
    access = Access(KeyRing(store), InProcessLimiter(), metrics)
    app = create_app(profile(gateway__auth__mode="keys"), lambda: engines, access=access)
    return app, key, metrics


def test_without_a_valid_key_the_api_answers_401_and_the_app_never_opens(
    engines: LocalBackends, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="keys"):
        create_app(profile(gateway__auth__mode="keys"), lambda: engines)
    app, key, metrics = keyed_app(engines, tmp_path)
    chat = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    missing = call(app, "POST", "/v1/chat/completions", json=chat)
    error = assert_openai_error(missing, 401, "invalid_api_key")
    assert "Authorization: Bearer" in error["message"]
    wrong = call(app, "GET", "/v1/models", headers={"Authorization": f"Bearer {key}x"})
    assert_openai_error(wrong, 401, "invalid_api_key")
    assert metrics.requests == [("", "unauthorized"), ("", "unauthorized")]


def test_the_openai_client_works_with_its_key_and_reads_the_limit_headers(
    engines: LocalBackends, tmp_path: Path
) -> None:
    app, key, metrics = keyed_app(engines, tmp_path, rpm=2, tpm=10_000)

    async def work(client: openai.AsyncOpenAI) -> Any:
        client = client.with_options(api_key=key)
        first = await client.chat.completions.with_raw_response.create(
            model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        embedded = await client.embeddings.create(model=EMBED, input="hello")
        try:
            await client.embeddings.create(model=EMBED, input="again")
        except openai.RateLimitError as exc:
            return first, embedded, exc
        raise AssertionError("the third request in a minute was let through")

    first, embedded, refused = with_openai(app, work)
    headers = first.headers
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["x-ratelimit-reset-requests"] == "30s"
    assert headers["x-ratelimit-limit-tokens"] == "10000"
    assert int(headers["x-ratelimit-remaining-tokens"]) < 10_000
    assert refused.status_code == 429
    assert refused.body["code"] == "rate_limit_exceeded"
    assert refused.response.headers["retry-after"] == "30"
    assert refused.response.headers["x-ratelimit-remaining-requests"] == "0"
    usage = json.loads(first.content)["usage"]
    assert metrics.requests == [("team", "ok"), ("team", "ok"), ("team", "requests")]
    assert metrics.used["team"] == usage["total_tokens"] + embedded.usage.total_tokens


def test_a_request_over_the_token_budget_is_refused_before_it_runs(
    engines: LocalBackends, tmp_path: Path
) -> None:
    app, key, _ = keyed_app(engines, tmp_path, tpm=100)
    auth = {"Authorization": f"Bearer {key}"}
    chat = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}]}
    too_big = call(
        app, "POST", "/v1/chat/completions", json={**chat, "max_tokens": 500}, headers=auth
    )
    error = assert_openai_error(too_big, 429, "rate_limit_exceeded")
    assert "max_tokens" in error["message"] and "retry-after" not in too_big.headers
    fits = call(app, "POST", "/v1/chat/completions", json={**chat, "max_tokens": 5}, headers=auth)
    assert fits.status_code == 200, fits.text
    # Settled: what it used came off, not the whole reservation.
    used = fits.json()["usage"]["total_tokens"]
    assert int(fits.headers["x-ratelimit-remaining-tokens"]) >= 100 - (used + 10)


def test_the_openapi_document_asks_for_the_key(engines: LocalBackends, tmp_path: Path) -> None:
    """Client generators read the bearer scheme; the probes and metrics stay open in it too."""
    app = keyed_app(engines, tmp_path)[0]
    document = call(app, "GET", "/openapi.json").json()  # the document itself needs no key
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert document["security"] == [{"apiKey": []}]
    assert document["paths"]["/livez"]["get"]["security"] == []
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert chat["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }

"""Keys and limits as a user meets them: an open gateway refuses a network address, a keyed
Bento serves the ``openai`` client with its key and refuses it past its limit or once revoked,
and limits kept in Redis hold across gateway workers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pytest

from bentochain.config.loader import PROJECT_ROOT
from bentochain.security.keys import KeyRecord, Limits
from bentochain.security.limits import Admission, BucketState, RedisLimiter
from bentochain.serving.internal import HEADER, TOKEN_ENV
from bentochain.serving.topology import composed_server, free_port
from tests.integration.conftest import Server
from tests.support.serving import samples, until
from tests.support.system import redis_server

pytestmark = pytest.mark.integration

BENTOCHAIN = [sys.executable, "-m", "bentochain.cli"]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BENTOCHAIN, *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("command", ["serve", "serve-split"])
def test_an_open_gateway_refuses_to_serve_on_a_network_address(
    served_env: dict[str, str], command: str
) -> None:
    done = cli(served_env, command, "--host", "0.0.0.0", "--port", str(free_port()))
    assert done.returncode == 2
    assert "refusing to serve an open gateway on 0.0.0.0" in done.stderr
    assert "gateway.auth.mode: keys" in done.stderr and "allow_open" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_keyed_bento_serves_its_keys_within_their_limits(
    served_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **served_env,
        "BENTOCHAIN_GATEWAY__AUTH__MODE": "keys",
        "BENTOCHAIN_GATEWAY__AUTH__KEYS_FILE": str(tmp_path / "keys.json"),
        "BENTOCHAIN_GATEWAY__AUTH__REFRESH_SECONDS": "0.5",
    }
    made = cli(env, "keys", "create", "me", "--rpm", "3")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]  # alone on the last line
    assert key.startswith("bc-") and key not in (tmp_path / "keys.json").read_text()

    with composed_server(tmp_path / "serve.log", env=env) as url:
        # The probes and the metrics stay open.
        for path in ("/livez", "/readyz", "/metrics"):
            assert httpx.get(f"{url}{path}", timeout=30).status_code == 200, path

        def chat(api_key: str) -> object:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)
            return client.chat.completions.create(
                model="llama-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )

        with pytest.raises(openai.AuthenticationError) as unkeyed:
            chat("bc-not-a-key")
        assert unkeyed.value.code == "invalid_api_key"
        answers = [chat(key) for _ in range(3)]
        assert all(a.choices for a in answers)  # type: ignore[attr-defined]
        with pytest.raises(openai.RateLimitError) as limited:
            chat(key)
        assert limited.value.code == "rate_limit_exceeded"
        assert int(limited.value.response.headers["retry-after"]) >= 1
        assert limited.value.response.headers["x-ratelimit-remaining-requests"] == "0"
        counted = {
            labels["outcome"]: value
            for labels, value in samples(url, "bentochain_api_key_requests_total")
            if labels["key"] == "me"
        }
        assert counted == {"ok": 3.0, "requests": 1.0}

        revoked = cli(env, "keys", "revoke", "me")
        assert revoked.returncode == 0, revoked.stderr

        def refused() -> bool:
            response = httpx.get(
                f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30
            )
            return response.status_code == 401

        until(refused, "the revoked key is refused, without a restart", 300)


def test_limits_in_redis_are_shared_by_every_worker(tmp_path: Path) -> None:
    limits = Limits(rpm=5, tpm=1000, max_concurrent=4)
    key = KeyRecord(
        name="shared", hash="h", prefix="bc-x", limits=limits, created=datetime.now(UTC)
    )
    with redis_server(tmp_path / "redis") as url:

        async def scenario() -> list[Admission | BucketState]:
            one, two = RedisLimiter(url), RedisLimiter(url)  # two gateway workers
            found: list[Admission | BucketState] = []
            found += [await one.admit(key) for _ in range(2)]
            found += [await two.admit(key) for _ in range(2)]
            found.append(await one.admit(key))  # 4 in flight: the limit
            await two.release(key)
            found.append(await one.admit(key))  # the 5th request of the minute
            await one.release(key)
            found.append(await two.admit(key))  # a 6th: over 5 a minute
            found.append(await one.reserve(key, 800))
            found.append(await two.reserve(key, 300))  # 200 left
            found.append(await two.settle(key, 800, 100))
            return found

        found = asyncio.run(scenario())
    admissions = [f for f in found[:7] if isinstance(f, Admission)]
    assert [a.admitted for a in admissions] == [True] * 4 + [False, True, False]
    assert admissions[4].reason == "concurrent" and admissions[6].reason == "requests"
    reserved, short, settled = found[7:]
    assert isinstance(reserved, Admission) and isinstance(short, Admission)
    assert reserved.admitted and reserved.state.remaining == pytest.approx(200, abs=1)
    assert not short.admitted and short.reason == "tokens"
    assert isinstance(settled, BucketState) and settled.remaining == pytest.approx(900, abs=1)


def test_a_model_service_refuses_a_call_without_the_internal_token(
    split: Server, served_env: dict[str, str]
) -> None:
    llm = split.services["LLM"]
    body = {"request": {"prompt": "hi", "params": {"max_tokens": 2}}}
    pickled = b"\x80\x04\x95 not even a valid pickle"  # refused before it is read
    for headers, content in (
        ({}, None),
        ({HEADER: "not-the-token"}, None),
        ({"content-type": "application/vnd.bentoml+pickle"}, pickled),
    ):
        refused = httpx.post(
            f"{llm}/generate",
            json=body if content is None else None,
            content=content,
            headers=headers,
            timeout=30,
        )
        assert refused.status_code == 401, (headers, refused.text)
        assert "from the other bentochain services only" in refused.text
    assert httpx.get(f"{llm}/readyz", timeout=30).status_code == 200  # probes stay open
    allowed = httpx.post(
        f"{llm}/generate", json=body, headers={HEADER: served_env[TOKEN_ENV]}, timeout=60
    )
    assert allowed.status_code == 200 and '"type":"finished"' in allowed.text
    # The gateway, which has the token, still reaches it.
    chat = {"model": "llama-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(f"{split.v1}/chat/completions", json=chat, timeout=60).status_code == 200

"""The serving benchmark: the engine's own limit, naive serving, and the served Bento, in one run.

    python -m loadtest.bench            # or: make bench

On one seeded synthetic workload and one model, it measures:

- the engine offline (in process, no HTTP): the limit the service can approach;
- naive serving: one request at a time with plain ``transformers`` ``generate``;
- transformers' own continuous batching (``generate_batch``), for comparison;
- the served Bento through the gateway, and the LLM service called directly (the gateway's
  cost), each run as a burst (saturation), closed loops and open-loop Poisson arrivals;
- the embedder served through the gateway against offline batched encoding;
- prefix caching on the SQL chain's real prompt (48 questions), off and on (``loadtest.prefix``);
- the peers, one at a time on the same model and requests: ``transformers serve
  --continuous-batching`` and Ray Serve with ``@serve.batch`` (``loadtest.peers``);
- on the default profile's model (SmolLM2), two LLM replicas against one on the same cores,
  and a rollout under streaming load (``loadtest.replicas``).

It prints a table with each target, writes JSON and a PNG plot under ``docs/bench/``, and
rewrites the generated part of ``docs/benchmarks.md``. The served runs use the split topology
(one server per service on loopback), so the LLM service can also be called directly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bentochain.config.loader import DEFAULT_PROFILE, PROJECT_ROOT, load_settings
from bentochain.config.schema import Settings
from bentochain.models.refs import ModelRef
from bentochain.models.store import prepare
from bentochain.serving.engines import engine_config
from bentochain.serving.internal import HEADER
from bentochain.serving.startup import quiet_transformers
from bentochain.serving.topology import SplitTopology, split_topology
from loadtest import peers, prefix, replicas, report
from loadtest.clients import DirectClient, EngineClient, GatewayClient
from loadtest.dataset import BenchRequest, sentences, synthetic
from loadtest.patterns import Run, burst, closed_loop, poisson
from loadtest.stats import median_latency, summarize


@dataclass
class Options:
    model: str = "demo:llama-36m"
    requests: int = 96
    prompt_tokens: tuple[int, int] = (32, 256)
    output_tokens: tuple[int, int] = (32, 192)
    seed: int = 0
    idle_requests: int = 12
    naive_requests: int = 12
    sweep_requests: int = 48
    sweep_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    concurrencies: tuple[int, ...] = (8, 32)
    long_tokens: int = 1024
    short_tokens: int = 16
    overhead_samples: int = 100
    embed_texts: int = 2048
    # Ingestion (documents sent in batches, as LangChain's embed_documents does) is the
    # throughput workload; one-text queries are measured too, for what adaptive batching gives.
    embed_workloads: tuple[tuple[str, int, int], ...] = (
        ("ingestion", 16, 32),
        ("queries", 1, 64),
    )
    hf_continuous_batching: bool = True
    peers: bool = True  # transformers serve and Ray Serve side by side (loadtest.peers)
    replicas: bool = True  # replicas and a rollout on the default model (loadtest.replicas)
    out_dir: Path = PROJECT_ROOT / "docs" / "bench"
    markdown: Path | None = PROJECT_ROOT / "docs" / "benchmarks.md"
    command: str = "make bench"


QUICK = {
    "model": "demo:llama-tiny",
    "requests": 16,
    "output_tokens": (8, 32),
    "idle_requests": 4,
    "naive_requests": 4,
    "sweep_requests": 8,
    "sweep_fractions": (0.5,),
    "concurrencies": (4,),
    "long_tokens": 4000,
    "overhead_samples": 10,
    "embed_texts": 128,
    "embed_workloads": (("ingestion", 16, 4), ("queries", 1, 8)),
    "hf_continuous_batching": False,
    "peers": False,
    "replicas": False,
}


@dataclass
class Results:
    options: dict[str, Any]
    machine: dict[str, Any]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _profile(model: str) -> tuple[Settings, dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BENTOCHAIN_")}
    env.update({"BENTOCHAIN_CONFIG": str(DEFAULT_PROFILE), "BENTOCHAIN_LLM__MODEL": model})
    return load_settings(DEFAULT_PROFILE, env), env


def _machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


# -- offline ------------------------------------------------------------------------------


T = TypeVar("T")


def apart(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a thread that ends with it.

    torch work on this process's main thread would leave an OpenMP team there for good, and
    every engine thread measured after it would run its small operators several times slower
    (docs/decisions.md, *one thread per model*). A thread's team goes when the thread does.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()


def prepare_models(settings: Settings) -> tuple[Path, Path]:
    """Every model the bench serves, in the BentoML store; the LLM's and the embedder's folders."""
    model_dir = prepare(settings.llm.model).path
    embed_dir = prepare(settings.embedder.model).path
    for ref in (settings.translators.fr.model, settings.translators.es.model):
        prepare(ModelRef.parse(str(ref)))
    return model_dir, embed_dir


def offline_engine(
    settings: Settings, model_dir: Path, requests: list[BenchRequest], warm: list[BenchRequest]
) -> Run:
    """Every request at once, after the same burst of other prompts (``warm``) as the server
    gets, so that both are measured warm (see ``fresh_bursts``)."""
    from bentochain.engines.llm.engine import LLMEngine

    engine = LLMEngine(model_dir, engine_config(settings.llm))
    try:
        asyncio.run(burst(EngineClient(engine), warm, "engine warm-up"))
        return asyncio.run(burst(EngineClient(engine), requests, "engine offline"))
    finally:
        engine.close()
        del engine
        gc.collect()


def workload(tokenizer: Any, opts: Options, seed_offset: int = 0) -> list[BenchRequest]:
    """The measured request set (``seed_offset`` 0), or one like it with other prompts."""
    return synthetic(
        tokenizer,
        opts.requests,
        prompt_tokens=opts.prompt_tokens,
        output_tokens=opts.output_tokens,
        seed=opts.seed + seed_offset,
    )


def fresh_bursts(tokenizer: Any, opts: Options) -> tuple[list[BenchRequest], list[BenchRequest]]:
    """Two more request sets like the measured one, with other prompts: one to warm a server
    (and the offline engine) up, one for the LLM service called directly.

    A server's first burst is its slowest (fresh memory faults in; ~0.6x the throughput of
    the next on this VM), and a burst of prompts seen before is faster than it should be (the
    prefix cache): saturation is measured warm, on prompts nobody has sent yet.
    """
    return workload(tokenizer, opts, 1), workload(tokenizer, opts, 2)


def naive(model_dir: Path, requests: list[BenchRequest]) -> dict[str, Any]:
    """One request at a time with ``generate``: what serving without batching delivers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    tokens, started = 0, time.perf_counter()
    with torch.inference_mode():
        for request in requests:
            ids = torch.tensor([tokenizer(request.prompt)["input_ids"]])
            out = model.generate(
                ids,
                max_new_tokens=request.output_tokens,
                min_new_tokens=request.output_tokens,
                do_sample=False,
            )
            tokens += out.shape[1] - ids.shape[1]
    duration = time.perf_counter() - started
    return {
        "requests": len(requests),
        "output_tokens": tokens,
        "duration_s": duration,
        "output_tokens_per_s": tokens / duration,
    }


def hf_continuous_batching(model_dir: Path, requests: list[BenchRequest]) -> dict[str, Any]:
    """transformers' ``generate_batch`` on the same requests (one shared max_new_tokens)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    longest = max(r.output_tokens for r in requests)
    config = GenerationConfig(
        max_new_tokens=longest,
        do_sample=False,
        eos_token_id=-1,
        pad_token_id=tokenizer.pad_token_id,
        num_blocks=2048,
        block_size=16,
        max_batch_tokens=2048,
    )
    inputs = [tokenizer(r.prompt)["input_ids"] for r in requests]
    started = time.perf_counter()
    outputs = model.generate_batch(inputs=inputs, generation_config=config, progress_bar=False)
    duration = time.perf_counter() - started
    tokens = sum(len(o.generated_tokens) for o in outputs.values())
    return {
        "requests": len(requests),
        "output_tokens": tokens,
        "duration_s": duration,
        "output_tokens_per_s": tokens / duration,
        "note": f"every request generates {longest} tokens (one max_new_tokens per batch)",
    }


def offline_embeddings(settings: Settings, model_dir: Path, texts: list[str]) -> dict[str, Any]:
    from bentochain.engines.encoder import SentenceEncoder

    encoder = SentenceEncoder(model_dir, settings.embedder.max_seq_length)
    size = settings.embedder.batching.max_batch_size
    encoder.encode(texts[:size])  # warm up
    started = time.perf_counter()
    for start in range(0, len(texts), size):
        encoder.encode(texts[start : start + size])
    duration = time.perf_counter() - started
    return {
        "texts": len(texts),
        "batch": size,
        "duration_s": duration,
        "texts_per_s": len(texts) / duration,
    }


# -- served -------------------------------------------------------------------------------


async def _overhead(
    gateway: str, llm: str, model: str, samples: int, internal_token: str
) -> dict[str, Any]:
    """Median latency of a one-token completion through the gateway and straight to the LLM."""
    body = {"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
    direct_body = {"request": {"prompt": "Hello", "params": {"max_tokens": 1, "temperature": 0}}}
    via_gateway, direct = [], []
    internal = {HEADER: internal_token}  # the LLM service takes calls from services only
    async with aiohttp.ClientSession() as session:
        for i in range(samples + 5):
            t0 = time.perf_counter()
            async with session.post(f"{gateway}/v1/completions", json=body) as response:
                await response.read()
                assert response.status == 200, await response.text()
            t1 = time.perf_counter()
            async with session.post(
                f"{llm}/generate", json=direct_body, headers=internal
            ) as response:
                await response.read()
                assert response.status == 200, await response.text()
            t2 = time.perf_counter()
            if i >= 5:  # warm-up excluded
                via_gateway.append(t1 - t0)
                direct.append(t2 - t1)
    return {
        "samples": samples,
        "gateway_median_ms": 1000 * statistics.median(via_gateway),
        "direct_median_ms": 1000 * statistics.median(direct),
        "added_ms": 1000 * (statistics.median(via_gateway) - statistics.median(direct)),
    }


async def _short_during_long(client: GatewayClient, opts: Options) -> dict[str, Any]:
    long = BenchRequest(-1, "Tell me a very long story.", 0, opts.long_tokens)
    short = BenchRequest(-2, "Say hi.", 0, opts.short_tokens)
    long_task = asyncio.create_task(client.run(long))
    await asyncio.sleep(1.0)  # the long one is decoding
    short_result = await client.run(short)
    long_result = await long_task
    if not (short_result.ok and long_result.ok):
        raise RuntimeError(f"short/long run failed: {short_result.error or long_result.error}")
    assert short_result.e2e is not None and long_result.e2e is not None
    return {
        "long_tokens": opts.long_tokens,
        "short_tokens": opts.short_tokens,
        "long_e2e_s": long_result.e2e,
        "short_e2e_s": short_result.e2e,
        "short_finished_at_fraction_of_long": (1.0 + short_result.e2e) / long_result.e2e,
    }


async def _embed_served(
    gateway: str, model: str, texts: list[str], per_request: int, concurrency: int
) -> dict[str, Any]:
    """``concurrency`` clients embedding ``texts``, ``per_request`` at a time (base64, as the
    openai client asks by default)."""
    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    errors = 0
    async with aiohttp.ClientSession() as session:

        async def user() -> None:
            nonlocal errors
            while chunks:
                chunk = chunks.pop()
                body = {"model": model, "input": chunk, "encoding_format": "base64"}
                async with session.post(f"{gateway}/v1/embeddings", json=body) as response:
                    await response.read()
                    errors += response.status != 200

        warm = {"model": model, "input": texts[:8]}
        async with session.post(f"{gateway}/v1/embeddings", json=warm) as response:
            await response.read()
        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        duration = time.perf_counter() - started
    return {
        "texts": len(texts),
        "per_request": per_request,
        "concurrency": concurrency,
        "errors": errors,
        "duration_s": duration,
        "texts_per_s": len(texts) / duration,
    }


async def _scrape(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("bentochain_llm_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def served_runs(
    topology: SplitTopology,
    model: str,
    settings: Settings,
    requests: list[BenchRequest],
    texts: list[str],
    opts: Options,
    results: Results,
    warm: list[BenchRequest],
    direct_requests: list[BenchRequest],
) -> None:
    gateway, llm = topology.urls["Gateway"], topology.urls["LLM"]
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        via_gateway = GatewayClient(session, gateway, model)
        direct = DirectClient(session, llm, topology.internal_token)
        log("served: warm-up burst (other prompts)")
        await burst(via_gateway, warm, "warm-up")
        log("served: saturation through the gateway")
        results.runs["served"] = summarize(await burst(via_gateway, requests, "served (gateway)"))
        log("served: saturation straight to the LLM service (other prompts)")
        results.runs["direct"] = summarize(
            await burst(direct, direct_requests, "LLM service direct")
        )
        results.figures["metrics_after_load"] = await _scrape(llm)
        idle_ids = {r.id for r in requests[: opts.idle_requests]}
        log("served: idle latency (one request at a time)")
        idle = await closed_loop(via_gateway, requests[: opts.idle_requests], 1)
        results.runs["idle"] = summarize(idle)
        for concurrency in opts.concurrencies:
            log(f"served: closed loop, concurrency {concurrency}")
            run = await closed_loop(via_gateway, requests, concurrency)
            results.runs[f"closed_{concurrency}"] = summarize(run)
        saturated_rate = results.runs["served"]["request_throughput"]
        half: Run | None = None
        for fraction in opts.sweep_fractions:
            rate = fraction * saturated_rate
            log(f"served: Poisson arrivals at {rate:.2f} req/s ({fraction:.0%} of saturation)")
            run = await poisson(via_gateway, requests[: opts.sweep_requests], rate, opts.seed)
            results.runs[f"poisson_{fraction:.2f}"] = {**summarize(run), "fraction": fraction}
            if fraction == 0.5:
                half = run
        if half is not None:
            results.figures["half_load_latency"] = {
                "rate": 0.5 * saturated_rate,
                "idle_median_e2e_s": median_latency(idle),
                "loaded_median_e2e_s": median_latency(half, idle_ids),
            }
        log("served: a short request while a long one generates")
        results.figures["short_during_long"] = await _short_during_long(via_gateway, opts)
    log("served: gateway overhead (one-token completions)")
    results.figures["gateway_overhead"] = await _overhead(
        gateway, llm, model, opts.overhead_samples, topology.internal_token
    )
    for name, per_request, concurrency in opts.embed_workloads:
        log(f"served: embeddings through the gateway ({name}: {per_request} per request)")
        results.figures[f"embed_{name}"] = await _embed_served(
            gateway, settings.embedder.served_id, texts, per_request, concurrency
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", help="demo model reference (default demo:llama-36m)")
    parser.add_argument("--requests", type=int, help="requests in the workload")
    parser.add_argument("--quick", action="store_true", help="a small run on demo:llama-tiny")
    parser.add_argument("--out", type=Path, help="folder for JSON and PNG (default docs/bench)")
    parser.add_argument("--no-markdown", action="store_true", help="leave docs/benchmarks.md")
    parser.add_argument("--no-peers", action="store_true", help="leave the peers' table out")
    parser.add_argument(
        "--no-replicas", action="store_true", help="leave replicas and the rollout out"
    )
    args = parser.parse_args(argv)

    opts = Options(**(QUICK if args.quick else {}))  # type: ignore[arg-type]
    if args.model:
        opts.model = args.model
    if args.requests:
        opts.requests = args.requests
    if args.out:
        opts.out_dir = args.out
    if args.no_markdown:
        opts.markdown = None
    if args.no_peers:
        opts.peers = False
    if args.no_replicas:
        opts.replicas = False
    opts.command = "python -m loadtest.bench " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if not argv and len(sys.argv) == 1:
        opts.command = "make bench"

    quiet_transformers()
    settings, env = _profile(opts.model)
    results = Results(options=json.loads(json.dumps(asdict(opts), default=str)), machine=_machine())
    log(f"preparing models for {opts.model}")
    model_dir, embed_dir = apart(prepare_models, settings)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    requests = workload(tokenizer, opts)
    texts = sentences(opts.embed_texts, seed=opts.seed)
    results.figures["workload"] = {
        "requests": len(requests),
        "prompt_tokens_total": sum(r.prompt_tokens for r in requests),
        "output_tokens_total": sum(r.output_tokens for r in requests),
    }

    log("offline: the engine in process, every request at once")
    warm, direct_requests = fresh_bursts(tokenizer, opts)
    results.runs["offline"] = summarize(offline_engine(settings, model_dir, requests, warm))
    log(f"offline: naive serving, {opts.naive_requests} requests one at a time with generate()")
    results.figures["naive"] = apart(naive, model_dir, requests[: opts.naive_requests])
    if opts.hf_continuous_batching:
        log("offline: transformers' continuous batching (generate_batch)")
        results.figures["hf_continuous_batching"] = apart(
            hf_continuous_batching, model_dir, requests
        )
    log("offline: prefix caching on the SQL chain's prompt, off then on")
    results.figures["prefix_cache"] = prefix.run(
        settings, model_dir, prefix.sql_chain_prompts(tokenizer)
    )
    log("offline: batched encoding with the embedder")
    results.figures["embed_offline"] = apart(offline_embeddings, settings, embed_dir, texts)
    gc.collect()

    with tempfile.TemporaryDirectory(prefix="bench-logs-") as logs:
        log("starting the split topology (one server per service)")
        with split_topology(env, Path(logs), timeout=600) as topology:
            asyncio.run(
                served_runs(
                    topology,
                    settings.llm.served_id,
                    settings,
                    requests,
                    texts,
                    opts,
                    results,
                    warm,
                    direct_requests,
                )
            )

    results.targets = report.targets(results.runs, results.figures)
    print(report.table(results.runs, results.figures, results.targets))
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "bench-quick" if args.quick else "bench"
    (opts.out_dir / f"{stem}.json").write_text(json.dumps(asdict(results), indent=2) + "\n")
    report.plot(results.runs, results.figures, opts.out_dir / f"{stem}.png")
    if opts.markdown is not None:
        report.write_markdown(opts.markdown, results, opts.command, f"bench/{stem}")
        prefix.write_section(results.figures["prefix_cache"], opts.model, opts.command)
    log(f"wrote {opts.out_dir / stem}.json and .png")
    if opts.peers:
        log("the peers: transformers serve and Ray Serve, on the same model and requests")
        compared = peers.run(opts.model)
        print("\n".join(peers.table(compared)))
        if opts.markdown is not None:
            peers.write(compared, opts.command)
    if opts.replicas:
        log("replicas and a rollout, on the default profile's model")
        found = replicas.run()
        print("\n".join(replicas.table(found)))
        if opts.markdown is not None:
            replicas.write(found, opts.command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

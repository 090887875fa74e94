"""``bentochain``: check a profile, prepare its models, serve the Bento composed or split."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bentochain.config.loader import CONFIG_ENV, PROJECT_ROOT, ProfileError, load_settings
from bentochain.config.schema import Settings


def _profile_entries(settings: Settings) -> list[tuple[str, str]]:
    """(profile key, reference) of every model the profile names."""
    return [
        ("llm.model", str(settings.llm.model)),
        ("embedder.model", str(settings.embedder.model)),
        ("translators.fr.model", str(settings.translators.fr.model)),
        ("translators.es.model", str(settings.translators.es.model)),
    ]


def _load(args: argparse.Namespace) -> Settings:
    if args.profile:
        os.environ[CONFIG_ENV] = str(Path(args.profile).resolve())
    return load_settings()


def cmd_check(args: argparse.Namespace) -> int:
    settings = _load(args)
    print(f"profile OK: {os.environ.get(CONFIG_ENV) or 'configs/default.yaml'}")
    for key, ref in _profile_entries(settings):
        print(f"  {key}: {ref}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from bentochain.models.refs import ModelRef
    from bentochain.models.store import prepare
    from bentochain.serving.startup import quiet_transformers
    from bentochain.sql.demo import build_shop
    from bentochain.sql.source import DEMO, demo_database

    settings = _load(args)
    quiet_transformers()
    started = time.perf_counter()
    seen: set[str] = set()
    for key, ref in _profile_entries(settings):
        if ref in seen:
            continue
        seen.add(ref)
        t0 = time.perf_counter()
        try:
            result = prepare(ModelRef.parse(ref))
        except Exception as exc:
            print(f"bentochain: cannot prepare {key} ({ref}): {exc}", file=sys.stderr)
            return 1
        note = " (demo: random weights)" if result.ref.is_demo else ""
        print(f"{result.action:>8}  {ref:<32} {result.tag}{note} [{time.perf_counter() - t0:.2f}s]")
    if settings.chains.sql.database == DEMO:
        t0 = time.perf_counter()
        path = demo_database(settings.chains)
        action = "built" if build_shop(path) else "present"
        print(f"{action:>8}  {DEMO:<32} {path} [{time.perf_counter() - t0:.2f}s]")
    print(f"models ready in {time.perf_counter() - started:.2f}s")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The composed Bento: ``bentoml serve``, after checking the profile and the models."""
    _load(args)
    from bentochain.serving.launch import launch_command
    from bentochain.serving.topology import ENTRY

    command = launch_command(
        f"bento-{args.port}",
        "serve",
        ENTRY,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--working-dir",
        str(PROJECT_ROOT),
    )
    os.chdir(PROJECT_ROOT)
    os.execv(sys.executable, command)


def cmd_serve_split(args: argparse.Namespace) -> int:
    """Every service in its own server, as one Kubernetes Deployment per service runs them."""
    _load(args)
    from bentochain.serving.topology import SplitTopology

    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers, as Ctrl+C does
    topology = SplitTopology(host=args.host, port=args.port)
    try:
        topology.start()
    except KeyboardInterrupt:
        return 130
    for name, url in topology.urls.items():
        print(f"{name:>12}  {url}")
    print(f"gateway ready on http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
    return topology.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bentochain", description=__doc__)
    parser.add_argument(
        "--profile", help=f"profile YAML (default: ${CONFIG_ENV} or configs/default.yaml)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="validate the profile").set_defaults(func=cmd_check)
    commands.add_parser(
        "prepare", help="put every model the profile names into the BentoML model store"
    ).set_defaults(func=cmd_prepare)
    for name, func, text in (
        ("serve", cmd_serve, "serve the composed Bento (bentoml serve)"),
        ("serve-split", cmd_serve_split, "serve each service as its own server"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, default=3000)
        sub.set_defaults(func=func)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ProfileError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""``bentochain``: check a profile, prepare its models, serve the Bento composed or split, and
roll a split topology's services over to a new version."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bentochain.config.loader import CONFIG_ENV, PROJECT_ROOT, ProfileError, load_settings
from bentochain.config.schema import Settings


def _profile_entries(settings: Settings) -> list[tuple[str, str]]:
    """(profile key, reference) of every model the profile names, canaries included."""
    entries = [
        ("llm", settings.llm),
        ("embedder", settings.embedder),
        ("translators.fr", settings.translators.fr),
        ("translators.es", settings.translators.es),
    ]
    found = [(f"{key}.model", str(entry.model)) for key, entry in entries]
    found += [
        (f"{key}.canary.model", str(entry.canary.model))
        for key, entry in entries
        if entry.canary is not None
    ]
    return found


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


def _open_to_the_network(settings: Settings, host: str) -> str | None:
    """Why serving on ``host`` is refused, if it is: an open gateway on a non-loopback address."""
    import ipaddress

    auth = settings.gateway.auth
    if auth.mode != "open" or auth.allow_open:
        return None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (
        f"bentochain: refusing to serve an open gateway on {host}: anyone who reaches it could "
        "use every model. Set gateway.auth.mode: keys (BENTOCHAIN_GATEWAY__AUTH__MODE=keys, keys "
        "from `bentochain keys create NAME`), or gateway.auth.allow_open: true for a gateway "
        "behind a trusted proxy; or serve on 127.0.0.1."
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """The composed Bento: ``bentoml serve``, after checking the profile and the models."""
    settings = _load(args)
    refused = _open_to_the_network(settings, args.host)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    from bentochain.config.schema import SERVICE_KEYS
    from bentochain.serving.launch import launch_command
    from bentochain.serving.upstream import UpstreamConfigError, discovery_for

    for service, key in SERVICE_KEYS.items():  # a canary needs replicas of its own
        canary = settings.canary(service)
        if canary is not None:
            try:
                discovery_for(key, settings.upstream(service), canary, "composed")
            except UpstreamConfigError as exc:
                print(f"bentochain: {exc}", file=sys.stderr)
                return 2
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
    from bentochain.serving.internal import internal_token

    internal_token()  # this run's, in the environment every server inherits
    os.chdir(PROJECT_ROOT)
    os.execv(sys.executable, command)


def cmd_serve_split(args: argparse.Namespace) -> int:
    """Every service in its own servers, as one Kubernetes Deployment per service runs them."""
    refused = _open_to_the_network(_load(args), args.host)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    from bentochain.serving.topology import SplitTopology, parse_replicas

    try:
        replicas = parse_replicas(args.replicas)
    except ValueError as exc:
        print(f"bentochain: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers, as Ctrl+C does
    rollout = threading.Event()
    signal.signal(signal.SIGHUP, lambda signum, frame: rollout.set())
    topology = SplitTopology(host=args.host, port=args.port, replicas=replicas, report=_say)
    try:
        topology.start()
    except KeyboardInterrupt:
        return 130
    for server in topology.status():
        print(f"{server['service']:>12}  {server['url']}  ({server['version']})")
    print(
        f"gateway ready on http://{args.host}:{args.port} (Ctrl+C to stop; "
        f"`bentochain rollout` or SIGHUP to pid {os.getpid()} rolls the services over)",
        flush=True,
    )
    return topology.wait(rollout)


def _say(message: str) -> None:
    print(f"bentochain: {message}", flush=True)


def _control(port: int, command: str, services: list[str] | None = None) -> int:
    """Send ``command`` to the serve-split on ``port``, print what it says; 0 if it worked."""
    from bentochain.serving.control import Command, NotRunning, send

    ok = False
    try:
        for message in send(os.environ, port, Command(command=command, services=services or [])):
            event = message.get("event")
            if event == "progress":
                print(message["message"], flush=True)
            elif event == "status":
                for server in message["servers"]:
                    print(
                        f"{server['service']:>12}  {server['url']:<24} {server['version']:<7} "
                        f"pid {server['pid']:<8} {server['state']}"
                    )
            elif event == "done":
                ok = bool(message.get("ok"))
                if message.get("message"):
                    print(f"bentochain: {message['message']}", file=sys.stderr)
    except NotRunning as exc:
        print(f"bentochain: {exc}", file=sys.stderr)
        return 2
    return 0 if ok else 1


def cmd_rollout(args: argparse.Namespace) -> int:
    """Replace the replicas of SERVICE... (all but the Gateway by default), one at a time."""
    return _control(args.port, "rollout", args.services)


def cmd_status(args: argparse.Namespace) -> int:
    """The servers a serve-split runs now."""
    return _control(args.port, "status")


PRODUCTION_PROFILE = PROJECT_ROOT / "configs" / "production.yaml"
DEFAULT_IMAGE = "bentochain:0.1.0"
DEFAULT_DEV_IMAGE = "bentochain:0.1.0-demo"


def _deploy_profile(args: argparse.Namespace) -> tuple[Settings, Path]:
    """The profile a deployment runs, read from its file alone: this shell's BENTOCHAIN_*
    variables must not leak into what is committed and applied."""
    chosen = args.deploy_profile or args.profile
    path = Path(chosen).resolve() if chosen else PRODUCTION_PROFILE
    return load_settings(path, environ={}), path


def cmd_deploy_k8s(args: argparse.Namespace) -> int:
    """Render deploy/k8s: the base (default profile), the dev, prod and canary overlays."""
    from bentochain.config.loader import DEFAULT_PROFILE
    from bentochain.deploy.kubernetes import RenderError
    from bentochain.deploy.kustomize import Overlay, layout, write

    prod = _deploy_profile(args)
    base = (load_settings(DEFAULT_PROFILE, environ={}), DEFAULT_PROFILE)
    try:
        files = layout(
            base,
            prod,
            Overlay(args.dev_namespace, args.dev_image),
            Overlay(args.namespace, args.image),
        )
    except RenderError as exc:
        print(f"bentochain: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    written = write(out, files)
    print(f"wrote {len(written)} files under {out} (prod overlay from {prod[1]})")
    print(f"  kubectl apply -k {out / 'overlays' / 'dev'}   # or overlays/prod")
    print(f"  a release's canary: kubectl apply -k {out / 'overlays' / 'canary'}")
    return 0


def cmd_deploy_bentocloud(args: argparse.Namespace) -> int:
    """Render the `bentoml deploy -f` file."""
    from bentochain.deploy.bentocloud import config, dump
    from bentochain.deploy.kubernetes import RenderError

    settings, path = _deploy_profile(args)
    try:
        text = dump(config(settings, path, args.bento))
    except RenderError as exc:
        print(f"bentochain: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out} (from {path}); deploy with: bentoml deploy -f {out}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay recorded requests on ``--target`` and judge its answers by the profile's gate."""
    import asyncio

    from bentochain.observability.records import RequestRecord, read_records
    from bentochain.quality.replay import compare, replay, replayable
    from bentochain.quality.report import write

    settings = _load(args)
    paths = [Path(p) for p in args.records]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"bentochain: no such records: {', '.join(missing)}", file=sys.stderr)
        return 2
    records = [r for r in read_records(paths) if isinstance(r, RequestRecord) and replayable(r)]
    if args.limit is not None:
        records = records[-args.limit :]  # the most recent
    if not records:
        print(f"bentochain: no replayable record in {', '.join(args.records)}", file=sys.stderr)
        return 2
    print(f"replaying {len(records)} recorded requests on {args.target}")
    replayed = asyncio.run(replay(records, args.target, concurrency=args.concurrency))
    comparison = compare(replayed, args.target, settings.quality_gate)
    for measure in comparison.measures:
        value = "n/a" if measure.value is None else f"{measure.value:.3f}"
        verdict = {True: "pass", False: "FAIL", None: "-"}[measure.passed]
        bound = ">=" if measure.higher_is_better else "<="
        print(f"  {measure.name:<18} {value:>8}  {bound} {measure.threshold:<6g} {verdict}")
    written = write(comparison, Path(args.out))
    print(f"report: {', '.join(str(p) for p in written)}")
    if not comparison.passed:
        failed = ", ".join(m.name for m in comparison.failed)
        print(f"bentochain: the quality gate failed: {failed}", file=sys.stderr)
        return 1
    print("the quality gate passed")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """``keys create / list / revoke``: API keys, stored as hashes where the profile says."""
    from pydantic import ValidationError

    from bentochain.security.keys import KeyProblem, Limits, create, listing, revoke
    from bentochain.serving.startup import key_store

    settings = _load(args)
    store = key_store(settings)
    try:
        if args.action == "create":
            limits = Limits(rpm=args.rpm, tpm=args.tpm, max_concurrent=args.max_concurrent)
            key = create(store, args.name, limits, expires_days=args.expires)
            where = settings.gateway.auth.store
            print(f"created key '{args.name}' ({where} store); it is shown this once:")
            print(key)
        elif args.action == "revoke":
            record = revoke(store, args.name)
            print(f"revoked key '{record.name}' ({record.prefix}…): refused within seconds")
        else:
            lines = listing(store.load().values())
            print("\n".join(lines) if lines else "no keys yet: bentochain keys create NAME")
    except KeyProblem as exc:
        print(f"bentochain: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        problem = exc.errors()[0]
        print(f"bentochain: --{problem['loc'][0]}: {problem['msg']}", file=sys.stderr)
        return 2
    return 0


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
        ("serve-split", cmd_serve_split, "serve each service as its own servers"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, default=3000)
        sub.set_defaults(func=func)
        if name == "serve-split":
            sub.add_argument(
                "--replicas",
                help="servers per service, e.g. LLM=2,Embedder=2 (LLM.canary=N for the canary)",
            )
    rollout = commands.add_parser(
        "rollout",
        help="replace a serve-split's replicas one at a time, from the profile as it is now",
    )
    rollout.add_argument(
        "services", nargs="*", metavar="SERVICE", help="default: all but the Gateway"
    )
    status = commands.add_parser("status", help="the servers a serve-split runs now")
    for sub, func in ((rollout, cmd_rollout), (status, cmd_status)):
        sub.add_argument("--port", type=int, default=3000, help="the serve-split's gateway port")
        sub.set_defaults(func=func)
    deploy = commands.add_parser(
        "deploy", help="render what a cluster or BentoCloud runs, from the profiles"
    ).add_subparsers(dest="target", required=True)
    k8s = deploy.add_parser("k8s", help="kustomize base + dev, prod and canary overlays")
    k8s.add_argument("--out", required=True, help="folder to write (deploy/k8s is committed)")
    k8s.add_argument(
        "--image", default=DEFAULT_IMAGE, help="the prod overlay's image (built with its profile)"
    )
    k8s.add_argument(
        "--dev-image", default=DEFAULT_DEV_IMAGE, help="the dev overlay's (default profile)"
    )
    k8s.add_argument("--namespace", default="bentochain", help="the prod overlay's namespace")
    k8s.add_argument("--dev-namespace", default="bentochain-dev")
    k8s.set_defaults(func=cmd_deploy_k8s)
    cloud = deploy.add_parser("bentocloud", help="the `bentoml deploy -f` file")
    cloud.add_argument("--out", required=True, help="file to write")
    cloud.add_argument("--bento", default="bentochain:latest", help="the Bento to deploy")
    cloud.set_defaults(func=cmd_deploy_bentocloud)
    for sub in (k8s, cloud):
        sub.add_argument(
            "--profile",
            dest="deploy_profile",
            help="the production profile (default: configs/production.yaml)",
        )
    keys = commands.add_parser("keys", help="API keys: create, list, revoke").add_subparsers(
        dest="action", required=True
    )
    made = keys.add_parser("create", help="a new key, printed once (its hash is stored)")
    made.add_argument("name")
    made.add_argument("--rpm", type=int, default=0, help="requests per minute (0: no limit)")
    made.add_argument("--tpm", type=int, default=0, help="tokens per minute (0: no limit)")
    made.add_argument("--max-concurrent", type=int, default=0, help="requests at once")
    made.add_argument("--expires", type=float, help="days until it stops working")
    keys.add_parser("list", help="every key's name, prefix, state and limits")
    gone = keys.add_parser("revoke", help="stop a key (within seconds, no restart)")
    gone.add_argument("name")
    for sub in (made, gone, keys.choices["list"]):
        sub.set_defaults(func=cmd_keys)
    replay = commands.add_parser(
        "replay",
        help="send recorded requests to a candidate and judge its answers (quality_gate)",
    )
    replay.add_argument("records", nargs="+", help="record files or folders (records.*.jsonl)")
    replay.add_argument("--target", required=True, help="the candidate's gateway URL")
    replay.add_argument("--limit", type=int, help="replay only the most recent N")
    replay.add_argument("--concurrency", type=int, default=1, help="requests at once (1)")
    replay.add_argument("--out", default="replay-report", help="folder of the report")
    replay.set_defaults(func=cmd_replay)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ProfileError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

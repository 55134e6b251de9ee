"""``fedsynth gateway``: the synthesis gateway (HTTP), following the global model topic."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
from pathlib import Path

import pandas as pd
from aiohttp import web

from fedsynth.errors import ConfigError
from fedsynth.messages import MessageFactory
from schemas.signing import IdentityKey, KeyRing
from synth_gateway.api import build_app
from synth_gateway.follower import ModelFollower
from synth_gateway.ports import ReleasedModel, StaticModelSource
from synth_gateway.store import ReleaseStore
from topics.clients import make_producer
from topics.registry import ensure_topics, synthetic_topic

__all__ = ["configure", "run"]

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of ``fedsynth gateway``."""
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers")
    parser.add_argument(
        "--run-dir", type=Path, default=Path(os.environ.get("FEDSYNTH_RUN_DIR", ".fedsynth/run"))
    )
    parser.add_argument(
        "--federation", default=os.environ.get("FEDSYNTH_FEDERATION_ID", "fedsynth-demo")
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--no-auth", action="store_true", help="serve WITHOUT bearer-token auth")


def _tokens(run_dir: Path, no_auth: bool) -> frozenset[str] | None:
    if no_auth:
        return None
    env = os.environ.get("FEDSYNTH_GATEWAY_TOKENS")
    if env:
        return frozenset(t.strip() for t in env.split(",") if t.strip())
    path = run_dir / "gateway" / "token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24))
        log.warning("created gateway token in %s (set FEDSYNTH_GATEWAY_TOKENS in production)", path)
    return frozenset({path.read_text().strip()})


async def _serve(args: argparse.Namespace, bootstrap: str) -> None:
    keys_dir = args.run_dir / "keys"
    ring = KeyRing()
    ring.add("aggregator", KeyRing.from_dir(keys_dir).get("aggregator"))
    factory = MessageFactory(args.federation, "gateway", IdentityKey.load(keys_dir, "gateway"))
    source = StaticModelSource()
    follower = ModelFollower(bootstrap, args.federation, ring, source)
    producer = make_producer(bootstrap, client_id="gateway")
    store = ReleaseStore(args.run_dir / "gateway").open()
    published: set[str] = set()

    async def on_release(release_id: str, frame: pd.DataFrame, model: ReleasedModel) -> None:
        spec = synthetic_topic(model.dataset)
        if spec.name not in published:
            await ensure_topics(bootstrap, [spec])
            published.add(spec.name)
        for i, row in enumerate(frame.to_dict(orient="records")):
            values = {
                k: (
                    None
                    if pd.isna(v)
                    else (
                        float(v)
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                        else str(v)
                    )
                )
                for k, v in row.items()
            }
            out = factory.build(
                "SyntheticRow",
                {
                    "release_id": release_id,
                    "dataset": model.dataset,
                    "row_index": i,
                    "values": values,
                },
            )
            await producer.send(spec.name, out.value, key=model.dataset.encode())
        await producer.flush()

    app = build_app(
        source, store, tokens=_tokens(args.run_dir, args.no_auth), on_release=on_release
    )
    runner = web.AppRunner(app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await producer.start()
    await follower.start()
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
        log.info("gateway listening on http://%s:%d", args.host, args.port)
        await stop.wait()
    finally:
        await runner.cleanup()
        await follower.stop()
        await producer.stop()
        store.close()


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM."""
    from topics.discovery import resolve_bootstrap

    if not (args.run_dir / "keys").is_dir():
        raise ConfigError(
            f"no keys in {args.run_dir / 'keys'}: create them with `fedsynth keys new`"
        )
    asyncio.run(_serve(args, resolve_bootstrap(args.bootstrap)))
    return 0

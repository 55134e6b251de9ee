"""``fedsynth agent``: run one site's agent beside its data."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from agents.settings import AgentSettings
from fedsynth.errors import ConfigError

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of ``fedsynth agent`` (each also settable as ``FEDSYNTH_<NAME>``)."""
    parser.add_argument("--site", required=True, help="this site's id (its identity key name)")
    parser.add_argument("--data", type=Path, required=True, help="the site's CSV or Parquet file")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers")
    parser.add_argument("--run-dir", type=Path, help="keys, outbox, ledger (default .fedsynth/run)")
    parser.add_argument("--federation", help="federation id")
    parser.add_argument("--epsilon", type=float, help="total privacy budget of this site")
    parser.add_argument(
        "--hist-noise", type=float, help="noise multiplier of the DP histograms (16 / epsilon)"
    )
    parser.add_argument("--steps-per-round", type=int, help="local DP-SGD steps per update")
    parser.add_argument(
        "--planned-rounds", type=int, help="rounds the DP noise and the rate decay are planned for"
    )
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--max-minutes-per-update", type=float, help="local training time cap")
    parser.add_argument("--no-dp", action="store_true", help="train WITHOUT differential privacy")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="the federation is in plain mode: send DP histograms in the clear with the hello",
    )


def run(args: argparse.Namespace) -> int:
    """Validate the data, then follow the federation until its final version."""
    from agents.site import SiteAgent
    from topics.discovery import resolve_bootstrap

    over: dict[str, object] = {"site": args.site, "data": args.data}
    for flag, name in (
        ("run_dir", "run_dir"),
        ("federation", "federation_id"),
        ("epsilon", "epsilon"),
        ("hist_noise", "hist_noise"),
        ("steps_per_round", "steps_per_round"),
        ("planned_rounds", "planned_rounds"),
        ("threads", "threads"),
        ("max_minutes_per_update", "max_minutes_per_update"),
    ):
        value = getattr(args, flag)
        if value is not None:
            over[name] = value
    if args.no_dp:
        over["dp"] = False
    if args.plain:
        over["secure"] = False
    try:
        settings = AgentSettings(**over)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"agent settings: {exc}") from exc
    agent = SiteAgent(settings, resolve_bootstrap(args.bootstrap or settings.bootstrap))
    return asyncio.run(agent.run())

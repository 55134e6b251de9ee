"""``fedsynth aggregator``: run the streaming aggregator (a faust-streaming worker)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
from pathlib import Path

from aggregator.settings import AggregatorSettings
from fedsynth.durable import StateLock
from fedsynth.errors import ConfigError

__all__ = ["add_federation_arguments", "configure", "load_checkpoint_key", "run"]

log = logging.getLogger(__name__)


def add_federation_arguments(parser: argparse.ArgumentParser, run_dir_help: str) -> None:
    """``--bootstrap``, ``--run-dir`` and ``--federation``, as every aggregator command takes
    them."""
    parser.add_argument(
        "--bootstrap",
        help="Kafka bootstrap servers (else FEDSYNTH_BOOTSTRAP, "
        "else the embedded broker recorded by `fedsynth broker`)",
    )
    parser.add_argument("--run-dir", type=Path, help=f"{run_dir_help} (default .fedsynth/run)")
    parser.add_argument("--federation", help="federation id")


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of ``fedsynth aggregator`` (each also settable as ``FEDSYNTH_<NAME>``)."""
    add_federation_arguments(parser, "state, keys and traces")
    parser.add_argument("--sites", help="comma-separated roster of site ids")
    parser.add_argument("--rounds", type=int, help="global versions to publish")
    parser.add_argument("--dataset", help="dataset schema name or path")
    parser.add_argument(
        "--strategy", help='strategy as JSON, e.g. \'{"name": "fedbuff", "buffer_size": 3}\''
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="plain mode: the aggregator sees each site's update (NOT the default)",
    )
    parser.add_argument(
        "--reinstate",
        metavar="SITE",
        help="instead of running: take back a suspended site in the stopped aggregator's "
        "checkpoint (with --epsilon, the total `fedsynth ledger absorb` printed for it)",
    )
    parser.add_argument(
        "--epsilon", type=float, help="with --reinstate: the site's privacy ledger's total"
    )
    parser.add_argument(
        "--send",
        action="store_true",
        help="with --reinstate: send the command to the running aggregator, signed with the "
        "key folder's operator key, instead of editing the stopped aggregator's checkpoint",
    )
    parser.add_argument("--note", default="", help="with --reinstate: a note for the audit event")
    parser.add_argument(
        "--absorbed-write",
        metavar="ID",
        help="with --reinstate: the last write id of the ledger added to the site's (`fedsynth "
        "ledger absorb` prints it); later records are then judged by their ledger's write ids, "
        "not by the site's clock",
    )


def _settings(args: argparse.Namespace) -> AggregatorSettings:
    over: dict[str, object] = {}
    if args.send and not args.sites and not os.environ.get("FEDSYNTH_SITES"):
        over["sites"] = (args.reinstate or "-",)  # a command to send needs no roster
    if args.run_dir:
        over["run_dir"] = args.run_dir
    if args.federation:
        over["federation_id"] = args.federation
    if args.sites:
        over["sites"] = tuple(s.strip() for s in args.sites.split(",") if s.strip())
    if args.rounds:
        over["rounds"] = args.rounds
    if args.dataset:
        over["dataset"] = args.dataset
    if args.strategy:
        try:
            over["strategy"] = json.loads(args.strategy)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--strategy is not valid JSON: {exc}") from exc
    if args.plain:
        over["mode"] = "plain"
    try:
        return AggregatorSettings(**over)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"aggregator settings: {exc}") from exc


def load_checkpoint_key(settings: AggregatorSettings, create: bool = True) -> bytes:
    """The 32-byte checkpoint key: FEDSYNTH_CHECKPOINT_KEY (hex), else a 0600 key file (made
    when missing, unless ``create`` is False: then a missing one is an error).

    Raises:
        ConfigError: a malformed FEDSYNTH_CHECKPOINT_KEY, or no key and ``create`` False.
    """
    env = os.environ.get("FEDSYNTH_CHECKPOINT_KEY")
    if env:
        try:
            key = bytes.fromhex(env)
        except ValueError as exc:
            raise ConfigError("FEDSYNTH_CHECKPOINT_KEY must be 64 hex digits") from exc
        if len(key) != 32:
            raise ConfigError("FEDSYNTH_CHECKPOINT_KEY must be 64 hex digits (32 bytes)")
        return key
    path = settings.state_dir / "checkpoint.key"
    if not path.exists() and not create:
        raise ConfigError(
            f"no checkpoint key: set FEDSYNTH_CHECKPOINT_KEY as for the aggregator ({path} "
            "does not exist)"
        )
    if not path.exists():
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        log.warning(
            "created checkpoint key %s; in production pass FEDSYNTH_CHECKPOINT_KEY "
            "from a secret store instead",
            path,
        )
    return bytes.fromhex(path.read_text().strip())


def _reinstate(args: argparse.Namespace, settings: AggregatorSettings) -> int:
    from aggregator.reinstate import reinstate_site

    if args.reinstate is None or args.epsilon is None:
        raise ConfigError("--reinstate SITE and --epsilon TOTAL go together")
    if args.send:
        return _send_reinstate(args, settings)
    key = load_checkpoint_key(settings, create=False)  # a new key could not read the checkpoint
    why = reinstate_site(
        settings, key, args.reinstate, args.epsilon, args.note, args.absorbed_write
    )
    print(  # noqa: T201 - CLI output
        f"site {args.reinstate} reinstated at epsilon {args.epsilon!r} (it was suspended: "
        f"{why}); start the aggregator again"
    )
    return 0


def _send_reinstate(args: argparse.Namespace, settings: AggregatorSettings) -> int:
    import asyncio

    from aggregator.operator import reinstate_command, send_command
    from aggregator.settings import OPERATOR
    from schemas.errors import KeyStoreError
    from schemas.signing import IdentityKey
    from topics.discovery import resolve_bootstrap

    try:
        key = IdentityKey.load(settings.keys_dir, OPERATOR)
    except KeyStoreError as exc:
        raise ConfigError(
            f"{exc}: the operator signs commands with its own key (`fedsynth keys new --site "
            f"{OPERATOR}`, its .pub in the aggregator's key folder)"
        ) from exc
    command = reinstate_command(
        settings.federation_id, key, args.reinstate, args.epsilon, args.note, args.absorbed_write
    )
    bootstrap = resolve_bootstrap(args.bootstrap or settings.bootstrap)
    asyncio.run(send_command(bootstrap, command, args.reinstate))
    print(  # noqa: T201 - CLI output
        f"sent: reinstate site {args.reinstate} at epsilon {args.epsilon!r} (command "
        f"{command.message_id}); the aggregator records it in the audit topic, or says why not "
        "in the dead-letter topic; then start the site's agent again"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Start the worker; returns when it is stopped (Ctrl-C or SIGTERM). With ``--reinstate``,
    take back a suspended site in the checkpoint instead (:mod:`aggregator.reinstate`)."""
    from faust.worker import Worker

    from aggregator.app import build_app
    from topics.discovery import resolve_bootstrap

    settings = _settings(args)
    if args.reinstate is not None or args.epsilon is not None or args.send:
        return _reinstate(args, settings)
    if settings.mode == "plain":
        log.warning(
            "PLAIN MODE: secure aggregation is OFF; the aggregator sees each site's update"
        )
    bootstrap = resolve_bootstrap(args.bootstrap or settings.bootstrap)
    # held for the life of the process; the kernel drops it however the process ends
    with StateLock(settings.state_dir, "the aggregator"):
        app = build_app(settings, bootstrap, load_checkpoint_key(settings))
        worker = Worker(app, loglevel="INFO", quiet=True, redirect_stdouts=False)
        for noisy in ("faust", "mode", "aiokafka"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        worker.execute_from_commandline()
    return 0

"""``fedsynth audit``: show the aggregator's audit trail and say whether it holds.

Reads ``fedsynth.audit`` from its beginning, checks each record's signature against the
aggregator's public key in the key folder, puts the events back into their chains (one per run
of the aggregator) and checks every link (:mod:`aggregator.audit`); and checks that the trail
records the newest global version on ``fedsynth.global-model`` (read first, so that a version
published meanwhile finds its event already in the trail), which a trail cut short does not.
Prints the events (all, or those about one site) and the findings; exits 0 when the trail
holds, 3 when it does not (an error in the command itself, such as a missing key folder, exits
1, as for every command).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os

from rich.console import Console
from rich.table import Table

from aggregator.cli import add_federation_arguments
from aggregator.settings import AggregatorSettings
from fedsynth.errors import ConfigError
from observability import AuditEvent

__all__ = ["EXIT_BROKEN", "configure", "run"]

EXIT_BROKEN = 3
"""Exit code when the trail does not hold (a finding), apart from errors of the command."""


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of ``fedsynth audit``."""
    add_federation_arguments(parser, "the run folder whose keys/ holds aggregator.pub")
    parser.add_argument("--site", help="show only the events about this site (all are checked)")
    parser.add_argument("--json", action="store_true", help="one JSON event per line, no table")
    parser.add_argument("--topic", default=None, help=argparse.SUPPRESS)  # tests: their own topic
    parser.add_argument("--model-topic", default=None, help=argparse.SUPPRESS)  # (the same)


def _settings(args: argparse.Namespace) -> AggregatorSettings:
    over: dict[str, object] = {}
    if not os.environ.get("FEDSYNTH_SITES"):
        over["sites"] = ("-",)  # reading the trail needs no roster
    if args.run_dir:
        over["run_dir"] = args.run_dir
    if args.federation:
        over["federation_id"] = args.federation
    try:
        return AggregatorSettings(**over)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"aggregator settings: {exc}") from exc


def _about(event: AuditEvent, site: str | None) -> bool:
    return site is None or event.actor == site or event.details.get("site") == site


def _when(event: AuditEvent) -> str:
    return dt.datetime.fromtimestamp(event.at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def run(args: argparse.Namespace) -> int:
    """Read, check and print the trail; returns 0 when it holds, :data:`EXIT_BROKEN` if not."""
    from aggregator.audit import (
        audit_findings,
        publication_findings,
        read_audit,
        read_global_versions,
    )
    from schemas.errors import KeyStoreError
    from schemas.signing import KeyRing
    from topics.discovery import resolve_bootstrap
    from topics.registry import AUDIT, GLOBAL_MODEL

    settings = _settings(args)
    try:
        keys = KeyRing.from_dir(settings.keys_dir)
    except KeyStoreError as exc:
        raise ConfigError(str(exc)) from exc
    if "aggregator" not in keys.senders:
        raise ConfigError(f"no aggregator.pub in {settings.keys_dir}: the trail's signatures "
                          "cannot be checked without the aggregator's public key")
    bootstrap = resolve_bootstrap(args.bootstrap or settings.bootstrap)
    topic = args.topic or AUDIT.name
    fed, models = settings.federation_id, args.model_topic or GLOBAL_MODEL.name
    versions = asyncio.run(read_global_versions(bootstrap, fed, keys, models))
    read = asyncio.run(read_audit(bootstrap, fed, keys, topic))
    chains, resent, findings = audit_findings(read)
    findings += publication_findings(chains, versions, models)
    console = Console(highlight=False)
    # the verdict's lines are not wrapped (for grep); with --json, stdout holds events only
    verdict = Console(highlight=False, soft_wrap=True, stderr=args.json)
    for number, chain in enumerate(chains, 1):
        shown = [e for e in chain if _about(e, args.site)]
        if args.json:
            for event in shown:
                console.out(json.dumps({"chain": number, **event.to_dict()}, sort_keys=True))
            continue
        table = Table(title=f"chain {number}: {len(chain)} events" + (
            f", {len(shown)} about {args.site}" if args.site else ""))
        for column in ("seq", "at (UTC)", "actor", "action", "details"):
            table.add_column(column, overflow="fold")
        for event in shown:
            details = json.dumps(dict(event.details), sort_keys=True)
            table.add_row(str(event.seq), _when(event), event.actor, event.action,
                          details if len(details) <= 160 else details[:157] + "...")
        console.print(table)
    summary = (f"{sum(map(len, chains))} events in {len(chains)} chain(s) of federation "
               f"{settings.federation_id!r}; {resent} sent again (an aggregator's restart), "
               f"{read.others} records of other federations skipped; "
               + (f"the newest global version on {models} is {versions[-1].version}"
                  if versions else f"no global version of it on {models}"))
    if not findings:
        verdict.print(f"{summary}. The trail holds: every record signed by the aggregator, "
                      "every chain linked from its first event"
                      + (", the newest global version's publication recorded." if versions
                         else "."), style="green")
        return 0
    verdict.print(f"{summary}. The trail does NOT hold:", style="bold red")
    for finding in findings:
        verdict.print(f"  - {finding}")
    return EXIT_BROKEN

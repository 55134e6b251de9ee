"""``fedsynth ledger``: show a site's privacy ledger, or add a second ledger of the site to it.

fedsynth ledger show --site SITE [--run-dir DIR]
fedsynth ledger absorb OTHER_LEDGER --site SITE [--run-dir DIR]

``absorb`` is the first step of taking a suspended site back (README, "When something fails"):
a second agent of the site kept its own ledger, so the site's privacy was spent by both. The
other ledger's steps are composed into this site's ledger
(:meth:`fedsynth.privacy.SiteLedger.absorb`), and the command prints the new total and the
other ledger's last write id, which the aggregator's operator then passes to ``fedsynth
aggregator --reinstate SITE --epsilon TOTAL --absorbed-write ID`` (``--send`` to a running
aggregator): records that report that write as their charge are the stopped agent's last, and
records from a ledger that wrote after it come from an agent still running on it. An other
ledger that never wrote after the copy it was made from has no write of its own to name (its
last write is this ledger's too), so the command then leaves ``--absorbed-write`` out.
It holds the site folder's lock, so it refuses to run beside the site's agent. Updates still
in the site's outbox (an agent stopped before it could send them) report the total from before
the absorb, which the aggregator refuses from a reinstated site: they are dropped, and the
command says how many (their privacy stays counted in the ledger).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents.outbox import Outbox
from fedsynth.durable import StateLock
from fedsynth.errors import ConfigError
from fedsynth.privacy import SiteLedger
from topics.registry import UPDATES

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``show`` and ``absorb`` actions."""
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="print the privacy a site's ledger has recorded")
    absorb = sub.add_parser("absorb", help="add another ledger of the same site to its ledger")
    absorb.add_argument("other", type=Path, help="the other agent's ledger.json")
    for action in (show, absorb):
        action.add_argument("--site", required=True, help="the site's id")
        action.add_argument(
            "--run-dir", type=Path, default=Path(".fedsynth/run"),
            help="the agent's run folder (default .fedsynth/run)",
        )
        action.add_argument(
            "--delta", type=float, default=1e-5, help="the site's delta (default 1e-5)"
        )


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; errors surface as FedSynthError (exit code 1)."""
    site_dir = args.run_dir / "sites" / args.site
    path = site_dir / "ledger.json"
    if not path.exists():
        raise ConfigError(f"site {args.site!r} has no privacy ledger at {path}")
    with StateLock(site_dir, f"`fedsynth ledger` on site {args.site}"):
        ledger = SiteLedger.open(path, site_id=args.site, delta=args.delta)
        before = ledger.spent()
        if args.action == "show":
            print(  # noqa: T201 - CLI output
                f"site {args.site}: epsilon {before!r} at delta {ledger.delta:g}, "
                f"{ledger.total_steps} steps, sequence {ledger.sequence}"
            )
            return 0
        absorbed = SiteLedger.last_write_of(args.other)
        if absorbed is not None and ledger.holds_write(absorbed):
            absorbed = None  # a copy that never wrote on its own: its last write is this one's
        total = ledger.absorb(args.other)
        dropped = _drop_unsent_updates(Outbox(site_dir / "outbox"))
    if dropped:
        print(  # noqa: T201 - CLI output
            f"site {args.site}: dropped {dropped} unsent update message(s) from its outbox: "
            "they report the total from before the absorb, which the aggregator would refuse"
        )
    flags = f"--reinstate {args.site} --epsilon {total!r}"
    if absorbed is not None:  # later records are judged by it, not by the site's clock
        flags += f" --absorbed-write {absorbed}"
    print(  # noqa: T201 - CLI output (plain: a wrapped line would break the command in it)
        f"site {args.site}: {args.other} added to {path}; epsilon {before!r} -> {total!r} at "
        f"delta {ledger.delta:g}.\nOnce the site's other agents are stopped, its aggregator's "
        f"operator may reinstate it, with the aggregator stopped:\n  fedsynth aggregator "
        f"{flags}\nor while it runs (the key folder's operator key signs it):\n"
        f"  fedsynth aggregator {flags} --send"
    )
    return 0


def _drop_unsent_updates(outbox: Outbox) -> int:
    """Remove the outbox's messages to the updates topic; how many there were."""
    stale = [m for m in outbox.pending() if m.topic == UPDATES.name]
    for message in stale:
        outbox.ack(message.message_id)
    return len(stale)

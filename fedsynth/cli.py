"""The ``fedsynth`` command.

Each subcommand lives in the package that owns it, as a module with two functions::

    def configure(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

The table below names those modules as strings and only the chosen one is imported. That keeps
``fedsynth --help`` fast (no torch import) and keeps the pure core free of static imports of the
I/O packages (agents, topics, aggregator, synth_gateway), as ARCHITECTURE.md asks.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from fedsynth.errors import FedSynthError

__all__ = ["COMMANDS", "main"]


@dataclass(frozen=True, slots=True)
class Command:
    """A subcommand: the module that implements it and a one-line summary."""

    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "agents.demo_cli", "run the whole federation on this machine (embedded broker)"
    ),
    "broker": Command("topics.cli", "start the embedded Kafka-protocol broker (Tansu)"),
    "topics": Command("topics.cli_create", "create every registered topic on a cluster"),
    "keys": Command("schemas.cli", "manage site identity keys (keys new --site NAME)"),
    "agent": Command("agents.cli", "run a site agent beside the site's data"),
    "ledger": Command(
        "agents.ledger_cli", "show a site's privacy ledger, or add a second one of the site to it"
    ),
    "aggregator": Command("aggregator.cli", "run the streaming aggregator"),
    "audit": Command(
        "aggregator.audit_cli", "show the aggregator's audit trail and check that it holds"
    ),
    "gateway": Command("synth_gateway.cli", "run the synthesis gateway (HTTP)"),
    "schema": Command("fedsynth.data.cli", "dataset schemas (schema infer DATA)"),
    "train": Command("fedsynth.model.cli_train", "train the model on one site's data"),
    "sample": Command("fedsynth.model.cli_sample", "sample synthetic rows from a trained model"),
    "evaluate": Command("fedsynth.eval.cli", "compare real and synthetic data; write a report"),
}


def _top_help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: fedsynth COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += ["", "Run `fedsynth COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run one subcommand; returns the process exit code."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if not args_in or args_in[0] in {"-h", "--help"}:
        print(_top_help())  # noqa: T201 - CLI output
        return 0 if args_in else 2
    name, rest = args_in[0], args_in[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"fedsynth: unknown command {name!r}\n\n{_top_help()}", file=sys.stderr)
        return 2
    module = importlib.import_module(command.module)
    parser = argparse.ArgumentParser(prog=f"fedsynth {name}", description=command.summary)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.configure(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return int(module.run(args))
    except FedSynthError as exc:
        print(f"fedsynth {name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

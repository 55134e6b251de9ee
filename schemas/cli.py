"""``fedsynth keys``: create and show site identity keys.

``fedsynth keys new --site NAME [--dir DIR]`` writes ``DIR/NAME.key`` (mode 0600) and
``DIR/NAME.pub`` and never overwrites; ``fedsynth keys show --site NAME [--dir DIR]`` prints the
public key. ``DIR`` defaults to ``$FEDSYNTH_HOME/keys``, or ``./.fedsynth/keys`` when
``FEDSYNTH_HOME`` is unset.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

from rich.console import Console

from schemas.errors import SchemaError
from schemas.keyring import load_public_key
from schemas.signing import IdentityKey, key_paths

__all__ = ["configure", "default_key_dir", "public_key_fingerprint", "run"]


def default_key_dir() -> Path:
    """``$FEDSYNTH_HOME/keys``, else ``./.fedsynth/keys``."""
    return Path(os.environ.get("FEDSYNTH_HOME", ".fedsynth")) / "keys"


def public_key_fingerprint(raw_public_key: bytes) -> str:
    """SHA-256 of the raw public key, hex, grouped for reading aloud when comparing out of band."""
    digest = hashlib.sha256(raw_public_key).hexdigest()
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``new`` and ``show`` subcommands."""
    sub = parser.add_subparsers(dest="action", required=True)
    for action, summary in (
        ("new", "create an identity key pair for a site (never overwrites)"),
        ("show", "print a site's public key and its fingerprint"),
    ):
        p = sub.add_parser(action, help=summary, description=summary)
        p.add_argument("--site", required=True, help="site name (letters, digits, _ . -)")
        p.add_argument(
            "--dir",
            type=Path,
            default=None,
            help="key directory (default: $FEDSYNTH_HOME/keys or ./.fedsynth/keys)",
        )


def _new(site: str, directory: Path, console: Console) -> None:
    key = IdentityKey.generate()
    key_path, pub_path = key.save(directory, site)
    console.print(f"private key: {key_path} (mode 0600, keep it on the site)")
    console.print(f"public key:  {pub_path} (give it to the federation operator)")
    console.print(f"fingerprint: {public_key_fingerprint(key.public_raw())}")


def _show(site: str, directory: Path, console: Console) -> None:
    _, pub_path = key_paths(directory, site)
    try:
        pem = pub_path.read_bytes()
    except OSError as exc:
        raise SchemaError(f"cannot read {pub_path}: {exc.strerror}") from exc
    raw = load_public_key(pem).public_bytes_raw()
    console.print(f"site:        {site}")
    console.print(f"public key:  {pub_path}")
    console.print(f"fingerprint: {public_key_fingerprint(raw)}")
    console.print(pem.decode("ascii").rstrip(), highlight=False)


def run(args: argparse.Namespace) -> int:
    """Run ``keys new`` or ``keys show``; returns 0, or 1 with the reason on stderr."""
    console = Console(highlight=False)
    directory = args.dir if args.dir is not None else default_key_dir()
    try:
        if args.action == "new":
            _new(args.site, directory, console)
        else:
            _show(args.site, directory, console)
    except SchemaError as exc:
        Console(stderr=True, highlight=False).print(
            f"fedsynth keys {args.action}: error: {exc}", soft_wrap=True
        )
        return 1
    return 0

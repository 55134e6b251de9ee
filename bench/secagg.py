"""Benchmark: fedsynth SecAgg+ against Flower's SecAgg+ primitives on the same vectors.

``python -m bench.secagg [--quick]``. For each (sites, parameters) size both implementations run
one cohort on identical updates, weights, neighbour graph, threshold and dropouts (10% of the sites
vanish after sharing, so the server must rebuild their keys); each size runs 3 times (2 at 1M
parameters) and the fastest client and server times are kept. Client time is the mean per surviving
site of key generation, share creation/encryption/decryption, quantization and masking; server time
is summing the masked inputs, share reconstruction, mask regeneration and dequantization. Flower's
side is timed with its own functions (``flwr.common.secure_aggregation``: ``create_shares``,
``combine_shares``, ``pseudo_rand_gen``, ``quantize``, Fernet share encryption, ECDH keys) in the
order its SecAgg+ client mod and server workflow call them. The last line is
``RESULT total_vs_flower=<max ratio> target=0.25 met=yes|no``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

from fedsynth.secagg import (
    ClientConfig,
    ClientUpdate,
    CohortResult,
    Deadline,
    EncryptedShare,
    FixedPointSpec,
    ServerConfig,
    client_step,
    server_step,
    start_client,
    start_server,
)
from fedsynth.secagg.graph import neighbour_graph

__all__ = ["Size", "main"]

TARGET = 0.25
CLIP = 8.0
LEVELS = 1 << 21  # step 2^-18, Flower's with clip 8 and quantization range 2^22
FLOWER_TARGET_RANGE = 1 << 22
FLOWER_MOD_RANGE = 1 << 32


@dataclass(frozen=True, slots=True)
class Size:
    """One benchmark size and its protocol parameters."""

    sites: int
    params: int
    degree: int
    threshold: int

    @property
    def dropped(self) -> int:
        return max(1, self.sites // 10)


FULL = (Size(10, 100_000, 9, 6), Size(10, 1_000_000, 9, 6),
        Size(50, 100_000, 16, 9), Size(50, 1_000_000, 16, 9))
QUICK = (Size(5, 1_000, 4, 3), Size(8, 5_000, 4, 3))


@dataclass(frozen=True, slots=True)
class Timing:
    """Mean client seconds, server seconds, bytes on the wire per client."""

    client_s: float
    server_s: float
    wire_bytes: int

    @property
    def total_s(self) -> float:
        return self.client_s + self.server_s


def _inputs(size: Size) -> tuple[list[str], dict[str, np.ndarray], dict[str, float]]:
    rng = np.random.default_rng(size.sites * 7919 + size.params)
    sites = [f"site{i:03d}" for i in range(size.sites)]
    deltas = {s: rng.normal(0.0, 1.0, size.params).astype(np.float32) for s in sites}
    weights = {s: float(rng.uniform(0.2, 1.0)) for s in sites}
    return sites, deltas, weights


def _timed(clock: dict[str, float], key: str, fn, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn(*args)
    clock[key] = clock.get(key, 0.0) + time.perf_counter() - start
    return out


def run_ours(
    size: Size, sites: list[str], deltas: dict, weights: dict, dropped: set[str]
) -> Timing:
    """One fedsynth cohort; returns its timing (the result is checked against the plain sum)."""
    spec = FixedPointSpec(clip=CLIP, levels=LEVELS, max_weight=1.0, weight_levels=LEVELS)
    cfg = ServerConfig("bench", "cohort-1", 1, spec, size.params, size.threshold, size.degree,
                       size.sites, size.sites)
    clock: dict[str, float] = {}
    wire: dict[str, int] = dict.fromkeys(sites, 0)
    server, clients, queue = start_server(cfg), {}, []
    for i, s in enumerate(sites):
        ccfg = ClientConfig("bench", "cohort-1", s, spec, np.random.default_rng(i))
        update = ClientUpdate(deltas[s], weights[s], 0)
        clients[s], joins = _timed(clock, s, start_client, ccfg, update)
        wire[s] += len(joins[0].dh_public_key) + len(joins[0].enc_public_key)
        queue.extend(joins)
    result = None
    while result is None:
        if not queue:
            queue.append(Deadline("cohort-1", server.stage))
        server, out = _timed(clock, "server", server_step, server, queue.pop(0))
        for msg in out:
            if isinstance(msg, CohortResult):
                result = msg
                continue
            targets = [msg.recipient] if isinstance(msg, EncryptedShare) else sites
            for s in targets:
                if s in dropped and type(msg).__name__ in ("MaskRequest", "UnmaskRequest"):
                    continue
                clients[s], replies = _timed(clock, s, client_step, clients[s], msg)
                wire[s] += sum(_wire_size(r) for r in replies)
                queue.extend(replies)
    _check(result.sum_vector, sites, deltas, weights, dropped, CLIP / LEVELS)
    alive = [s for s in sites if s not in dropped]
    return Timing(float(np.mean([clock[s] for s in alive])), clock["server"],
                  int(np.mean([wire[s] for s in alive])))


def _wire_size(msg: object) -> int:
    fields = getattr(msg, "__slots__", ())
    total = 0
    for name in fields:
        value = getattr(msg, name)
        if isinstance(value, bytes):
            total += len(value)
        elif isinstance(value, int):
            total += 8
        elif isinstance(value, tuple):
            total += sum(len(v) if isinstance(v, bytes) else 0 for pair in value for v in pair)
    return total


def _check(vector: np.ndarray, sites, deltas, weights, dropped, step: float) -> None:  # type: ignore[no-untyped-def]
    expected = sum(
        np.clip(deltas[s].astype(np.float64), -CLIP, CLIP) * weights[s]
        for s in sites if s not in dropped
    )
    err = float(np.max(np.abs(vector - expected)))
    if err > 2 * len(sites) * step:
        raise RuntimeError(f"fedsynth result off by {err}")


def run_flower(
    size: Size, sites: list[str], deltas: dict, weights: dict, dropped: set[str]
) -> Timing:
    """The same cohort with Flower's SecAgg+ primitives, in the order its mod and workflow use."""
    from flwr.common import bytes_to_ndarray, ndarray_to_bytes
    from flwr.common.secure_aggregation.crypto import shamir
    from flwr.common.secure_aggregation.crypto import symmetric_encryption as sym
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        parameters_addition,
        parameters_mod,
        parameters_multiply,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize, quantize
    from flwr.common.secure_aggregation.secaggplus_utils import (
        pseudo_rand_gen,
        share_keys_plaintext_concat,
        share_keys_plaintext_separate,
    )
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_private_key,
        bytes_to_public_key,
        generate_key_pairs,
        private_key_to_bytes,
        public_key_to_bytes,
    )

    graph = neighbour_graph(sites, "cohort-1", size.degree)
    nid = {s: i + 1 for i, s in enumerate(sites)}
    clock: dict[str, float] = {}
    wire: dict[str, int] = dict.fromkeys(sites, 0)
    keys, seeds, held, ss2 = {}, {}, {s: {} for s in sites}, {}

    def keygen(s: str) -> None:
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        keys[s] = (private_key_to_bytes(sk1), public_key_to_bytes(pk1),
                   private_key_to_bytes(sk2), public_key_to_bytes(pk2))
        wire[s] += len(keys[s][1]) + len(keys[s][3])

    def share(s: str) -> list[tuple[str, bytes]]:
        seeds[s] = os.urandom(32)
        holders = sorted(graph[s] | {s})
        b_sh = shamir.create_shares(seeds[s], size.threshold, len(holders))
        k_sh = shamir.create_shares(keys[s][0], size.threshold, len(holders))
        out = []
        for idx, h in enumerate(holders):
            if h == s:
                held[s][s] = (b_sh[idx], k_sh[idx])
                continue
            key = sym.generate_shared_key(bytes_to_private_key(keys[s][2]),
                                          bytes_to_public_key(keys[h][3]))
            ss2[(s, h)] = ss2[(h, s)] = key
            plain = share_keys_plaintext_concat(nid[s], nid[h], b_sh[idx], k_sh[idx])
            out.append((h, sym.encrypt(key, plain)))
        wire[s] += sum(len(c) for _, c in out)
        return out

    def receive(h: str, s: str, ct: bytes) -> None:
        _, _, b, k = share_keys_plaintext_separate(sym.decrypt(ss2[(s, h)], ct))
        held[h][s] = (b, k)

    def mask(s: str) -> bytes:
        q_ratio = round(weights[s] * FLOWER_TARGET_RANGE)
        params = parameters_multiply([deltas[s].astype(np.float64)], q_ratio / FLOWER_TARGET_RANGE)
        vec = factor_combine(q_ratio, quantize(params, CLIP, FLOWER_TARGET_RANGE))
        dims = [a.shape for a in vec]
        vec = parameters_addition(vec, pseudo_rand_gen(seeds[s], FLOWER_MOD_RANGE, dims))
        for peer in sorted(graph[s]):
            key = sym.generate_shared_key(bytes_to_private_key(keys[s][0]),
                                          bytes_to_public_key(keys[peer][1]))
            pair = pseudo_rand_gen(key, FLOWER_MOD_RANGE, dims)
            op = parameters_addition if nid[s] > nid[peer] else parameters_subtraction
            vec = op(vec, pair)
        out = b"".join(ndarray_to_bytes(a) for a in parameters_mod(vec, FLOWER_MOD_RANGE))
        wire[s] += len(out)
        return out

    for s in sites:
        _timed(clock, s, keygen, s)
    for s in sites:
        for h, ct in _timed(clock, s, share, s):
            _timed(clock, h, receive, h, s, ct)
    alive = [s for s in sites if s not in dropped]
    total = None
    for s in alive:
        raw = _timed(clock, s, mask, s)
        total = _timed(clock, "server", _flower_sum, total, raw, size.params, bytes_to_ndarray,
                       parameters_addition, parameters_mod)
    for s in alive:  # unmask responses: the shares each survivor holds
        wire[s] += sum(len(held[s][o][0 if o not in dropped else 1]) for o in held[s])

    def unmask(vec: list) -> list:  # type: ignore[type-arg]
        dims = [a.shape for a in vec]
        for owner in sites:
            holders = [h for h in sorted(graph[owner] | {owner}) if h in alive]
            kind = 1 if owner in dropped else 0
            chosen = [held[h][owner][kind] for h in holders][: size.threshold]
            secret = shamir.combine_shares(chosen)
            if owner not in dropped:
                vec = parameters_subtraction(vec, pseudo_rand_gen(secret, FLOWER_MOD_RANGE, dims))
                continue
            for peer in sorted(graph[owner] & set(alive)):
                key = sym.generate_shared_key(bytes_to_private_key(secret),
                                              bytes_to_public_key(keys[peer][1]))
                pair = pseudo_rand_gen(key, FLOWER_MOD_RANGE, dims)
                vec = (parameters_addition if nid[owner] > nid[peer] else parameters_subtraction)(
                    vec, pair)
        vec = parameters_mod(vec, FLOWER_MOD_RANGE)
        return [vec[0], *dequantize(vec[1:], CLIP, FLOWER_TARGET_RANGE)]

    unmasked = _timed(clock, "server", unmask, total)
    expected_ratio = sum(round(weights[s] * FLOWER_TARGET_RANGE) for s in alive)
    if int(unmasked[0][0]) != expected_ratio:  # the weight element unmasks exactly or not at all
        raise RuntimeError("Flower baseline did not unmask correctly")
    return Timing(float(np.mean([clock[s] for s in alive])), clock["server"],
                  int(np.mean([wire[s] for s in alive])))


def _flower_sum(total, raw, params, to_nd, add, mod):  # type: ignore[no-untyped-def]
    from io import BytesIO

    buf = BytesIO(raw)
    vec = [np.load(buf, allow_pickle=False), np.load(buf, allow_pickle=False)]
    return vec if total is None else mod(add(total, vec), FLOWER_MOD_RANGE)


def _best(runs: list[Timing]) -> Timing:
    """Fastest of several runs, component by component (the machine is shared)."""
    return Timing(min(r.client_s for r in runs), min(r.server_s for r in runs), runs[0].wire_bytes)


def _flower_available() -> bool:
    try:
        import flwr.common.secure_aggregation.crypto.shamir  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table and the RESULT line; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.secagg", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--no-flower", action="store_true", help="skip the Flower baseline")
    args = parser.parse_args(argv)
    console = Console(width=120)
    flower = not args.no_flower and _flower_available()
    if not flower:
        console.print("flwr not installed" if not args.no_flower else "flower baseline skipped")
    table = Table(title="SecAgg+: fedsynth vs Flower (seconds; client = mean per site)")
    for col in ("sites", "params", "k", "t", "drop", "client", "server", "total", "bytes/client",
                "flwr client", "flwr server", "flwr total", "flwr bytes", "ratio"):
        table.add_column(col, justify="right")
    ratios: list[float] = []
    for size in QUICK if args.quick else FULL:
        sites, deltas, weights = _inputs(size)
        dropped = set(sites[1 : 1 + size.dropped])
        repeats = 1 if args.quick else (3 if size.params <= 100_000 else 2)
        ours = _best([run_ours(size, sites, deltas, weights, dropped) for _ in range(repeats)])
        row = [str(size.sites), str(size.params), str(size.degree), str(size.threshold),
               str(len(dropped)), f"{ours.client_s:.4f}", f"{ours.server_s:.4f}",
               f"{ours.total_s:.4f}", str(ours.wire_bytes)]
        if flower:
            base = _best([run_flower(size, sites, deltas, weights, dropped)
                          for _ in range(repeats)])
            ratios.append(ours.total_s / base.total_s)
            row += [f"{base.client_s:.4f}", f"{base.server_s:.4f}", f"{base.total_s:.4f}",
                    str(base.wire_bytes), f"{ratios[-1]:.3f}"]
        else:
            row += ["-"] * 5
        table.add_row(*row)
        del deltas
    console.print(table)
    worst = max(ratios) if ratios else float("nan")
    met = "yes" if ratios and worst <= TARGET else "no"
    print(f"RESULT total_vs_flower={worst:.3f} target={TARGET} met={met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

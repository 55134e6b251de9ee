"""The k-regular neighbour graph of SecAgg+ and the threshold rules around it.

Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS 2020): each
member exchanges masks and shares only with its ``k`` neighbours in a Harary graph over a random
permutation of the roster. Here the permutation is derived deterministically from the cohort id and
the sorted roster (members ordered by SHA-256 of that binding and their id), so every party
computes the same graph without another message. ``degree >= n - 1`` gives the complete graph
(SecAgg). A member's shares are held by its neighbours and itself (``k + 1`` holders).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from fedsynth.secagg.crypto import bind
from fedsynth.secagg.errors import UnsafeParametersError

__all__ = ["check_threshold", "holders", "neighbour_graph", "share_points"]


def _ring_order(members: Sequence[str], cohort_id: str) -> list[str]:
    salt = hashlib.sha256(bind("fedsynth/secagg/graph", cohort_id, *sorted(members))).digest()
    return sorted(members, key=lambda s: hashlib.sha256(salt + s.encode("utf-8")).digest())


def neighbour_graph(
    members: Sequence[str], cohort_id: str, degree: int
) -> dict[str, frozenset[str]]:
    """Return each member's neighbours (never itself) in the cohort's k-regular graph.

    Raises:
        UnsafeParametersError: repeated members, a degree below 1, or an odd degree with an odd
            number of members (no such regular graph exists).
    """
    n = len(members)
    if len(set(members)) != n:
        raise UnsafeParametersError("roster repeats a member")
    if degree < 1:
        raise UnsafeParametersError(f"degree must be at least 1, got {degree}")
    if degree >= n - 1:
        return {m: frozenset(members) - {m} for m in members}
    if degree % 2 and n % 2:
        raise UnsafeParametersError(f"no {degree}-regular graph on {n} members (both odd)")
    ring = _ring_order(members, cohort_id)
    graph: dict[str, set[str]] = {m: set() for m in ring}
    for i, member in enumerate(ring):
        for step in range(1, degree // 2 + 1):
            graph[member] |= {ring[(i + step) % n], ring[(i - step) % n]}
        if degree % 2:
            graph[member].add(ring[(i + n // 2) % n])
    return {m: frozenset(v) for m, v in graph.items()}


def holders(graph: dict[str, frozenset[str]], owner: str) -> frozenset[str]:
    """The members that hold ``owner``'s shares: its neighbours and itself."""
    return graph[owner] | {owner}


def share_points(members: Sequence[str]) -> dict[str, int]:
    """Shamir evaluation point of each member: its index in the sorted roster plus one."""
    return {m: i + 1 for i, m in enumerate(sorted(members))}


def check_threshold(threshold: int, degree: int, cohort_size: int) -> None:
    """Refuse a threshold that cannot reconstruct or that a minority of holders could reach.

    With ``h = min(degree, n - 1) + 1`` holders per secret the threshold must satisfy
    ``h / 2 < threshold <= h``.
    """
    h = min(degree, cohort_size - 1) + 1
    if not (2 * threshold > h and threshold <= h):
        raise UnsafeParametersError(
            f"threshold {threshold} outside ({h / 2}, {h}] for degree {degree}, n={cohort_size}"
        )

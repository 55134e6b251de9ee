"""Reading the aggregator's audit trail back (aggregator.audit): chains put together from the
topic's records, resends taken once, and every way the trail can fail to hold found."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aggregator.audit import (
    AuditRead,
    Publication,
    assemble_chains,
    audit_findings,
    audit_record,
    publication_findings,
    read_records,
    read_versions,
)
from fedsynth.messages import MessageFactory
from observability.audit import AuditChain, AuditEvent
from schemas.signing import IdentityKey, KeyRing

FEDERATION = "fed-audit"


def chain(n: int, start: int = 0) -> list[AuditEvent]:
    audit = AuditChain(clock=lambda: 1_700_000_000.0 + start)
    out = [audit.append("aggregator", "publish_version", {"version": start + i}) for i in range(n)]
    return out


def read(*events: AuditEvent) -> AuditRead:
    return AuditRead(events=list(enumerate(events)))


def test_a_whole_chain_holds_and_resends_count_once() -> None:
    events = chain(5)
    chains, resent, findings = audit_findings(read(*events[:3], events[1], *events[3:], events[0]))
    assert findings == [] and resent == 2
    assert chains == [events]


def test_a_changed_event_breaks_the_chain_where_it_is() -> None:
    events = chain(5)
    forged = dataclasses.replace(events[2], details=MappingProxyType({"version": 99}))
    _, _, findings = audit_findings(read(*events[:2], forged, *events[3:]))
    assert findings == ["chain 1 breaks at its event seq 2 (publish_version): hash does not "
                        "match the content"]


def test_a_missing_event_breaks_the_chain() -> None:
    events = chain(5)
    _, _, findings = audit_findings(read(*events[:2], *events[3:]))
    assert len(findings) == 1 and "seq 3" in findings[0] and "expected 2" in findings[0]


def test_a_new_run_starts_a_new_chain() -> None:
    first, second = chain(3), chain(2, start=10)
    chains, resent, findings = audit_findings(read(*first, first[0], *second))
    assert chains == [first, second] and resent == 1 and findings == []


def test_an_event_that_differs_from_the_one_read_before_with_its_seq_is_a_finding() -> None:
    events = chain(3)
    other = AuditChain(head=events[0]).append("aggregator", "suspend_site", {"site": "A"})
    chains, _, findings = assemble_chains(enumerate([*events, other]))
    assert chains == [events]
    assert findings == [f"offset 3: event seq 1 (suspend_site) differs from the one read before "
                        f"with that seq (publish_version, hash {events[1].hash[:12]})"]


def test_records_are_sorted_by_signer_and_federation() -> None:
    aggregator, site = IdentityKey.generate(), IdentityKey.generate()
    keys = KeyRing({"aggregator": aggregator.public_key, "A": site.public_key})
    events = chain(2)

    def record(key: IdentityKey, sender: str, event: AuditEvent, fed: str = FEDERATION) -> bytes:
        return audit_record(MessageFactory(fed, sender, key), event).value

    impostor = IdentityKey.generate()  # claims to be the aggregator
    records = [
        record(aggregator, "aggregator", events[0]),
        record(aggregator, "aggregator", events[1], fed="another"),
        record(site, "A", events[1]),
        record(impostor, "aggregator", events[1]),
        b"not a message",
        record(aggregator, "aggregator", events[1]),
    ]
    got = read_records(list(enumerate(records)), FEDERATION, keys)
    assert got.events == [(0, events[0]), (5, events[1])] and got.others == 1
    assert [offset for offset, _ in got.refused] == [2, 3, 4]
    assert "signed by 'A', not the aggregator" in got.refused[0][1]
    assert "signature" in got.refused[1][1]
    assert got.refused[2][1].startswith("not a message")
    _, _, findings = audit_findings(got)
    assert len(findings) == 3 and findings[0].startswith("offset 2: ")


@given(st.integers(1, 12), st.lists(st.integers(0, 11), max_size=10), st.booleans())
def test_any_resends_leave_the_chains_whole(n: int, again: list[int], new_run: bool) -> None:
    """Property: events sent again, each after itself, leave every chain as it was built."""
    events = chain(n)
    delivered: list[Any] = []
    for i, event in enumerate(events):
        delivered.append(event)
        delivered += [events[j] for j in again if j <= i]
    later = chain(3, start=100) if new_run else []
    chains, resent, findings = audit_findings(read(*delivered, *later))
    assert findings == [] and chains == ([events, later] if later else [events])
    assert resent == len(delivered) - n


def _on_topic(*versions: int) -> list[Publication]:
    return [Publication(offset, v) for offset, v in enumerate(versions)]


def test_the_newest_global_version_must_be_recorded_in_the_trail() -> None:
    """A chain's links do not show events cut off its end; the global-model topic's newest
    version does: the trail must record its publication (it may be ahead, never behind)."""
    events = chain(5)  # publishes versions 0-4
    assert publication_findings([events], _on_topic(0, 1, 2, 3, 4)) == []
    assert publication_findings([events], _on_topic(0, 1, 2, 3)) == []  # published since
    assert publication_findings([events], []) == []  # no version (yet, or another topic)
    (cut,) = publication_findings([events[:3]], _on_topic(0, 1, 2, 3, 4))
    assert "holds global version 4 (offset 4)" in cut and "the last it records is version 2" in cut
    (none,) = publication_findings([[]], _on_topic(0))
    assert "it records none" in none


def test_the_newest_version_is_looked_for_in_the_last_chain_that_publishes() -> None:
    """A fresh aggregator state starts a chain that publishes nothing before its version 0,
    then publishes from 0 again."""
    first = chain(5)
    started = [AuditChain().append("aggregator", "suspend_site", {"site": "A"})]
    assert publication_findings([first, started], _on_topic(0, 1, 2, 3, 4)) == []
    again = chain(3)  # versions 0-2 of the new run
    assert publication_findings([first, again], _on_topic(0, 1, 2, 3, 4, 0, 1, 2)) == []
    (cut,) = publication_findings([first, again[:1]], _on_topic(0, 1, 2, 3, 4, 0, 1, 2))
    assert "holds global version 2" in cut and "the last it records is version 0" in cut


def test_global_versions_are_read_whole_and_signed_by_the_aggregator() -> None:
    aggregator, site = IdentityKey.generate(), IdentityKey.generate()
    keys = KeyRing({"aggregator": aggregator.public_key, "A": site.public_key})

    def version(v: int, signer: IdentityKey = aggregator, sender: str = "aggregator",
                federation: str = FEDERATION) -> list[bytes]:
        fields = {"model_name": "m", "version": v, "vector": bytes(2_000_000) + bytes([v]),
                  "codec": "float32|zstd", "n_parameters": 500_000, "encoder": b"{}",
                  "contributors": ["A"], "epsilon_by_site": {"A": 1.0}}
        chunks = MessageFactory(federation, sender, signer).build_chunked("GlobalModel", fields)
        assert len(chunks) == 3
        return [c.value for c in chunks]

    whole, by_site, foreign = version(1), version(2, site, "A"), version(3, federation="x")
    cut = version(4)[:2]
    records = list(enumerate([*whole, *by_site, *foreign, *cut, b"not a message"]))
    assert read_versions(records, FEDERATION, keys) == [Publication(2, 1)]
    resent = list(enumerate([*whole, *version(5), *whole]))  # a restart sends its outbox again
    assert read_versions(resent, FEDERATION, keys) == [Publication(2, 1), Publication(5, 5)]

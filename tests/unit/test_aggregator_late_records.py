"""Records that come too early or too late for the aggregator are dead-lettered with a reason.

No broker: the runtime's real service is fed signed records directly (``AggregatorService.handle``
is pure). Before, a cohort record read before any cohort was open (one from before a restart) and
a plain update after the final version were dropped without a trace, and a late record of the
cohort that made the final version was told that its update rejoins a later cohort.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from agents.secure import PendingUpdate, SecureSite, SecureSiteConfig
from aggregator.service import Phase
from fedsynth.federation import ModelSpec
from fedsynth.messages import Inbound, MessageReader
from fedsynth.secagg.fixedpoint import FixedPointSpec
from fedsynth.staleness import make_staleness
from schemas.signing import KeyRing
from tests.integration.feeder import Feeder
from tests.integration.harness import FED, Federation
from tests.unit.service_maker import Maker


def test_a_cohort_record_before_any_cohort_is_open_is_dead_lettered(make_service: Maker) -> None:
    fed, make = make_service
    service = make()  # secure mode, gathering hellos
    join = fed.factory("A").build(
        "CohortJoin",
        {"cohort_id": "c1-old", "site_id": "A", "dh_public_key": bytes(32),
         "enc_public_key": bytes(32), "base_version": 0},
    )
    fx = service.handle(join.value)
    assert service.phase is Phase.GATHERING
    assert [d.error_class for d in fx.dead] == ["CohortRejected"]
    assert "c1-old" in fx.dead[0].reason and "no cohort is open yet" in fx.dead[0].reason


def test_a_plain_update_after_the_final_version_is_dead_lettered(make_service: Maker) -> None:
    fed, make = make_service
    service = make(mode="plain", rounds=1)
    feeder = Feeder(fed)
    for hello in feeder.hellos:
        assert not service.handle(hello).dead
    assert service.phase is Phase.TRAINING and service.state is not None
    n = int(service.state.params.size)
    for site in ("A", "B"):
        for chunk in feeder.update(site, 0, n):
            assert not service.handle(chunk).dead
    assert service.phase is Phase.DONE and service.state.model_version == 1
    late = [service.handle(chunk) for chunk in feeder.update("A", 1, n)]
    reasons = [d.reason for fx in late for d in fx.dead]
    assert len(reasons) == 1 and "after the final version 1" in reasons[0], reasons
    assert service.state.model_version == 1


def test_after_the_final_version_a_late_cohort_record_says_no_cohort_opens(
    make_service: Maker,
) -> None:
    """Secure mode in memory: one cohort of real SecureSite clients makes the final version;
    a join for that cohort read afterwards is refused saying that no later cohort opens."""
    fed, make = make_service
    service = make(rounds=1, secure_histograms=False)
    reader = MessageReader(FED, KeyRing.from_dir(fed.run_dir / "keys"))
    sites: dict[str, SecureSite] = {}
    inbox: list[bytes] = list(Feeder(fed).hellos)  # records the service has still to read
    to_sites: list[bytes] = []  # control records, and the shares sites relay to each other
    cohort = ""

    def publish(site: str, sends: list[tuple[str, dict[str, Any]]]) -> None:
        values = _signed(fed, site, sends)
        inbox.extend(values)
        to_sites.extend(v for (n, _), v in zip(sends, values, strict=True) if n == "EncryptedShare")

    for _ in range(500):
        if to_sites:
            got = reader.read(to_sites.pop(0))
            assert isinstance(got, Inbound), got
            for name, site in sites.items():
                publish(name, site.on_record(got.name, got.record, time.time()))
            continue
        if not inbox:
            break
        fx = service.handle(inbox.pop(0))
        assert not fx.dead, fx.dead
        for out in (m for send in fx.sends for m in send.messages):
            got = reader.read(out.value)
            if not isinstance(got, Inbound):
                continue
            if got.name == "GlobalModel" and got.record["version"] == 0:
                terms = ModelSpec.from_bytes(got.record["encoder"]).secure_terms
                assert terms is not None
                n = int(got.record["n_parameters"])
                for i, name in enumerate(fed.sites):
                    sites[name] = _secure_site(name, terms)
                    delta = np.random.default_rng(i).normal(0, 0.01, n).astype(np.float32)
                    publish(name, sites[name].submit(PendingUpdate(f"u{i}", delta, 100, 0), 0.0))
            elif got.name in ("CohortOpen", "CohortRoster", "MaskRequest", "UnmaskRequest"):
                cohort = cohort or str(got.record["cohort_id"])
                to_sites.append(out.value)
    assert service.phase is Phase.DONE and service.state is not None
    assert service.state.model_version == 1 and cohort
    late = fed.factory("A").build(
        "CohortJoin",
        {"cohort_id": cohort, "site_id": "A", "dh_public_key": bytes(32),
         "enc_public_key": bytes(32), "base_version": 0},
    )
    reasons = [d.reason for d in service.handle(late.value).dead]
    assert len(reasons) == 1, reasons
    assert "no later cohort opens (the run ended with the final version 1)" in reasons[0]


def _secure_site(name: str, terms: dict[str, Any]) -> SecureSite:
    spec = FixedPointSpec(clip=terms["clip"], levels=terms["levels"],
                          max_weight=terms["max_weight"], weight_levels=terms["weight_levels"])
    st = terms["staleness"]
    return SecureSite(
        SecureSiteConfig(FED, name, spec, make_staleness(st["kind"], st["a"], st["b"])),
        np.random.default_rng(len(name)),
    )


def _signed(fed: Federation, site: str, sends: list[tuple[str, dict[str, Any]]]) -> list[bytes]:
    """One signed record per send (masked updates of this size fit one chunk)."""
    factory = fed.factory(site)
    out = []
    for name, fields in sends:
        if name == "ModelUpdate":
            (chunk,) = factory.build_chunked(name, fields)
            out.append(chunk.value)
        else:
            out.append(factory.build(name, fields).value)
    return out

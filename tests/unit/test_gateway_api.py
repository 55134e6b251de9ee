"""Gateway HTTP API against an in-memory model source (no broker)."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from aiohttp.test_utils import TestClient, TestServer

from fedsynth.errors import ConstraintError
from synth_gateway.api import build_app
from synth_gateway.ports import ReleasedModel, StaticModelSource
from synth_gateway.store import ReleaseStore

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


GUIDANCE_SEEN: list[float | None] = []


def _sampler(
    n: int, where: str | None, rng: np.random.Generator, guidance: float | None = None
) -> pd.DataFrame:
    GUIDANCE_SEEN.append(guidance)
    if where == "impossible":
        raise ConstraintError("age>=200 is outside the clinical bounds of age [0, 120]")
    age = rng.integers(40, 61, size=n) if where else rng.integers(20, 90, size=n)
    return pd.DataFrame({"age": age.astype(float), "sex": rng.choice(["Male", "Female"], size=n)})


MODEL = ReleasedModel(
    "heart",
    "heart_disease_uci",
    3,
    ("Cleveland", "Hungary"),
    {"Cleveland": 1.5, "Hungary": 2.0},
    _sampler,
    ("age", "sex"),
)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient, ReleaseStore]]:
    store = ReleaseStore(tmp_path).open()
    app = build_app(StaticModelSource(MODEL), store, tokens=frozenset({TOKEN}))
    async with TestClient(TestServer(app)) as c:
        yield c, store
    store.close()


async def test_requires_a_token(client: tuple[TestClient, ReleaseStore]) -> None:
    c, _ = client
    assert (await c.post("/v1/synthesize", json={"n": 5})).status == 401
    assert (await c.get("/healthz")).status == 200


async def test_streams_csv_and_records_the_release(client: tuple[TestClient, ReleaseStore]) -> None:
    c, store = client
    resp = await c.post(
        "/v1/synthesize", json={"n": 600, "where": "age>=40", "seed": 1}, headers=AUTH
    )
    assert resp.status == 200
    body = await resp.text()
    frame = pd.read_csv(io.StringIO(body))
    assert len(frame) == 600 and frame["age"].between(40, 60).all()
    rid = resp.headers["X-Release-Id"]
    (release,) = store.releases()
    assert release["release_id"] == rid and release["n_rows"] == 600
    assert release["model_version"] == 3 and release["query"] == "age>=40"
    stored = store.rows(rid)
    assert stored["age"].tolist() == frame["age"].tolist()
    parquet = await c.get(f"/v1/releases/{rid}/parquet", headers=AUTH)
    assert parquet.status == 200
    assert len(pd.read_parquet(io.BytesIO(await parquet.read()))) == 600


async def test_bad_requests_are_explained(client: tuple[TestClient, ReleaseStore]) -> None:
    c, store = client
    too_many = await c.post("/v1/synthesize", json={"n": 10**9}, headers=AUTH)
    assert too_many.status == 400 and "n" in (await too_many.json())["error"]
    infeasible = await c.post("/v1/synthesize", json={"n": 5, "where": "impossible"}, headers=AUTH)
    assert infeasible.status == 422 and "clinical bounds" in (await infeasible.json())["error"]
    assert store.releases() == []


async def test_model_endpoint_and_dashboard(client: tuple[TestClient, ReleaseStore]) -> None:
    c, _ = client
    info = await (await c.get("/v1/model", headers=AUTH)).json()
    assert info["version"] == 3 and info["epsilon_by_site"]["Hungary"] == 2.0
    page = await (await c.get("/", headers=AUTH)).text()
    assert "version <b>3</b>" in page


async def test_guidance_reaches_the_model_and_the_provenance(
    client: tuple[TestClient, ReleaseStore],
) -> None:
    c, store = client
    GUIDANCE_SEEN.clear()
    resp = await c.post("/v1/synthesize", json={"n": 700, "guidance": 1.5}, headers=AUTH)
    assert resp.status == 200 and len(pd.read_csv(io.StringIO(await resp.text()))) == 700
    assert GUIDANCE_SEEN and set(GUIDANCE_SEEN) == {1.5}  # every batch, not only the first
    (release,) = store.releases()
    assert release["guidance"] == 1.5
    default = await c.post("/v1/synthesize", json={"n": 5, "format": "parquet"}, headers=AUTH)
    assert default.status == 200 and GUIDANCE_SEEN[-1] == MODEL.guidance == 1.0
    assert sorted(r["guidance"] for r in store.releases()) == [1.0, 1.5]  # the model's own
    # a model whose own scale is 1.5 (the DP recipe) serves and records 1.5 by default
    app = build_app(StaticModelSource(dataclasses.replace(MODEL, guidance=1.5)), store,
                    tokens=frozenset({TOKEN}))
    async with TestClient(TestServer(app)) as dp:
        served = await dp.post("/v1/synthesize", json={"n": 5}, headers=AUTH)
        assert served.status == 200 and len(pd.read_csv(io.StringIO(await served.text()))) == 5
    assert GUIDANCE_SEEN[-1] == 1.5
    assert sorted(r["guidance"] for r in store.releases()) == [1.0, 1.5, 1.5]
    bad = await c.post("/v1/synthesize", json={"n": 5, "guidance": -1}, headers=AUTH)
    assert bad.status == 400 and "guidance" in (await bad.json())["error"]


def test_a_catalogue_without_the_guidance_column_gains_it(tmp_path: Path) -> None:
    """A releases table made before guidance was recorded is migrated on open; its rows read 1."""
    import duckdb

    old = tmp_path / "releases.duckdb"
    con = duckdb.connect(str(old))
    con.execute(
        "CREATE TABLE releases (release_id VARCHAR PRIMARY KEY, created_at TIMESTAMP, "
        "dataset VARCHAR, model_name VARCHAR, model_version BIGINT, contributors VARCHAR, "
        "query VARCHAR, n_rows BIGINT, epsilon_by_site VARCHAR, parquet_path VARCHAR, "
        "parquet_sha256 VARCHAR, requested_by VARCHAR)"
    )
    con.execute(
        "INSERT INTO releases VALUES ('r0', now(), 'd', 'm', 1, '[]', '', 3, '{}', 'p', 'h', 'a')"
    )
    con.close()
    store = ReleaseStore(tmp_path).open()
    try:
        (release,) = store.releases()
        assert release["release_id"] == "r0" and release["guidance"] == 1.0
    finally:
        store.close()


async def test_an_unbounded_epsilon_is_null_in_strict_json(tmp_path: Path) -> None:
    """A site without DP, or one suspended for a second privacy ledger, has no bound (infinity
    in the model's provenance): the API, the header and the catalogue say null, never the
    ``Infinity`` token that strict JSON parsers refuse."""

    def strict(text: str) -> object:
        def refuse(token: str) -> float:
            raise ValueError(f"non-standard JSON token {token}")

        return json.loads(text, parse_constant=refuse)

    store = ReleaseStore(tmp_path).open()
    model = dataclasses.replace(MODEL, epsilon_by_site={"Cleveland": 1.5, "Hungary": np.inf})
    app = build_app(StaticModelSource(model), store, tokens=frozenset({TOKEN}))
    try:
        async with TestClient(TestServer(app)) as c:
            info = strict(await (await c.get("/v1/model", headers=AUTH)).text())
            assert isinstance(info, dict)
            assert info["epsilon_by_site"] == {"Cleveland": 1.5, "Hungary": None}
            resp = await c.post("/v1/synthesize", json={"n": 5}, headers=AUTH)
            assert resp.status == 200
            assert strict(resp.headers["X-Epsilon-By-Site"]) == {"Cleveland": 1.5, "Hungary": None}
            await resp.read()
        (release,) = store.releases()
        assert strict(release["epsilon_by_site"]) == {"Cleveland": 1.5, "Hungary": None}
    finally:
        store.close()

"""HTTP API of the synthesis gateway (aiohttp).

Routes:
    GET  /                         dashboard page (current model, recent releases)
    GET  /healthz                  liveness
    GET  /v1/model                 current model version, contributors, epsilon per site
                                   (null: no bound, a site without DP or a suspended one)
    POST /v1/synthesize            body ``{"n": 1000, "where": "age>=40", "format": "csv"}``;
                                   streams rows (csv or ndjson) as they are sampled, or returns
                                   a Parquet file; every release is stored with provenance
    GET  /v1/releases              the release catalogue
    GET  /v1/releases/{id}         one release's provenance
    GET  /v1/releases/{id}/parquet the release's Parquet file

Auth is on by default: ``Authorization: Bearer <token>`` with tokens from the settings. Running
without auth must be asked for and is logged as a warning.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import numpy as np
import pandas as pd
from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from fedsynth.errors import ConstraintError, FedSynthError
from fedsynth.model.sampling import MAX_GUIDANCE
from synth_gateway.ports import ModelSource, ReleasedModel, epsilon_json
from synth_gateway.store import Provenance, ReleaseStore

__all__ = ["SynthesisRequest", "build_app"]

log = logging.getLogger(__name__)

MAX_ROWS = 100_000
BATCH_ROWS = 250
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReleaseHook = Callable[[str, pd.DataFrame, ReleasedModel], Awaitable[None]]


class SynthesisRequest(BaseModel):
    """What a researcher asks for."""

    n: int = Field(gt=0, le=MAX_ROWS, description="number of synthetic rows")
    where: str | None = Field(default=None, max_length=2000, description="constraints")
    format: Literal["csv", "ndjson", "parquet"] = "csv"
    seed: int | None = Field(default=None, ge=0)
    guidance: float | None = Field(
        default=None,
        ge=0.0,
        le=MAX_GUIDANCE,
        description="classifier-free guidance scale: above 1 the rows follow the conditioning "
        "column more closely (train-on-synthetic utility up, fidelity down); default: the "
        "model's own (1.5 for the DP recipe, 1 otherwise)",
    )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _auth_middleware(tokens: frozenset[str]) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in {"/healthz"}:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or header[7:] not in tokens:
            return _error(401, "missing or invalid bearer token")
        return await handler(request)

    return middleware


def build_app(
    models: ModelSource,
    store: ReleaseStore,
    *,
    tokens: frozenset[str] | None,
    on_release: ReleaseHook | None = None,
) -> web.Application:
    """The gateway application. ``tokens=None`` disables auth (and says so loudly)."""
    middlewares = []
    if tokens is None:
        log.warning("gateway auth is OFF: anyone who reaches this port can draw synthetic data")
    else:
        middlewares.append(_auth_middleware(tokens))
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    api = _Api(models, store, on_release)
    app.add_routes(
        [
            web.get("/", api.dashboard),
            web.get("/healthz", api.healthz),
            web.get("/v1/model", api.model),
            web.post("/v1/synthesize", api.synthesize),
            web.get("/v1/releases", api.releases),
            web.get("/v1/releases/{release_id}", api.release),
            web.get("/v1/releases/{release_id}/parquet", api.release_parquet),
        ]
    )
    return app


class _Api:
    def __init__(self, models: ModelSource, store: ReleaseStore, hook: ReleaseHook | None) -> None:
        self.models = models
        self.store = store
        self.hook = hook

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def model(self, request: web.Request) -> web.Response:
        model = self.models.current()
        if model is None:
            return _error(503, "no global model version has been published yet")
        return web.json_response(_model_json(model))

    async def releases(self, request: web.Request) -> web.Response:
        rows = await asyncio.to_thread(self.store.releases)
        return web.json_response(rows, dumps=lambda o: json.dumps(o, default=str))

    async def release(self, request: web.Request) -> web.Response:
        rid = request.match_info["release_id"]
        rows = [r for r in await asyncio.to_thread(self.store.releases) if r["release_id"] == rid]
        if not rows:
            return _error(404, f"no release {rid!r}")
        return web.json_response(rows[0], dumps=lambda o: json.dumps(o, default=str))

    async def release_parquet(self, request: web.Request) -> web.StreamResponse:
        rid = request.match_info["release_id"]
        path = self.store.parquet_dir / f"{rid}.parquet"
        if "/" in rid or not path.is_file():
            return _error(404, f"no release {rid!r}")
        return web.FileResponse(path)

    async def synthesize(self, request: web.Request) -> web.StreamResponse:
        try:
            req = SynthesisRequest.model_validate(await request.json())
        except (ValidationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"bad request: {exc}")
        model = self.models.current()
        if model is None:
            return _error(503, "no global model version has been published yet")
        if req.guidance is None:  # served and recorded at the model's own scale
            req = req.model_copy(update={"guidance": model.guidance})
        rng = np.random.default_rng(req.seed)
        release_id = uuid.uuid4().hex
        try:  # a first small draw checks the constraints before any byte is streamed
            first = await asyncio.to_thread(
                model.sample, min(BATCH_ROWS, req.n), req.where, rng, req.guidance
            )
        except ConstraintError as exc:
            return _error(422, str(exc))
        except FedSynthError as exc:
            return _error(400, str(exc))
        if req.format == "parquet":
            frame = await self._draw_rest(model, req, rng, [first])
            info = await self._record(release_id, frame, model, req)
            return web.FileResponse(info.parquet_path, headers=_release_headers(release_id, model))
        return await self._stream(request, model, req, rng, first, release_id)

    async def _draw_rest(
        self,
        model: ReleasedModel,
        req: SynthesisRequest,
        rng: np.random.Generator,
        parts: list[pd.DataFrame],
    ) -> pd.DataFrame:
        have = sum(len(p) for p in parts)
        while have < req.n:
            part = await asyncio.to_thread(
                model.sample, min(BATCH_ROWS, req.n - have), req.where, rng, req.guidance
            )
            parts.append(part)
            have += len(part)
        return pd.concat(parts, ignore_index=True)

    async def _stream(
        self,
        request: web.Request,
        model: ReleasedModel,
        req: SynthesisRequest,
        rng: np.random.Generator,
        first: pd.DataFrame,
        release_id: str,
    ) -> web.StreamResponse:
        ctype = "text/csv" if req.format == "csv" else "application/x-ndjson"
        resp = web.StreamResponse(
            headers={"Content-Type": ctype, **_release_headers(release_id, model)}
        )
        await resp.prepare(request)
        parts = [first]
        await resp.write(_render(first, req.format, header=True))
        have = len(first)
        while have < req.n:
            part = await asyncio.to_thread(
                model.sample, min(BATCH_ROWS, req.n - have), req.where, rng, req.guidance
            )
            parts.append(part)
            have += len(part)
            await resp.write(_render(part, req.format, header=False))
        await self._record(release_id, pd.concat(parts, ignore_index=True), model, req)
        await resp.write_eof()
        return resp

    async def _record(
        self, release_id: str, frame: pd.DataFrame, model: ReleasedModel, req: SynthesisRequest
    ) -> Any:
        prov = Provenance(
            dataset=model.dataset,
            model_name=model.model_name,
            model_version=model.version,
            contributors=model.contributors,
            query=req.where or "",
            epsilon_by_site=dict(model.epsilon_by_site),
            guidance=model.guidance if req.guidance is None else req.guidance,
        )
        info = await asyncio.to_thread(self.store.record, release_id, frame, prov)
        if self.hook is not None:
            await self.hook(release_id, frame, model)
        return info

    async def dashboard(self, request: web.Request) -> web.Response:
        model = self.models.current()
        releases = await asyncio.to_thread(self.store.releases)
        return web.Response(text=_dashboard_html(model, releases[:20]), content_type="text/html")


def _release_headers(release_id: str, model: ReleasedModel) -> dict[str, str]:
    return {
        "X-Release-Id": release_id,
        "X-Model-Version": str(model.version),
        "X-Epsilon-By-Site": json.dumps(epsilon_json(model.epsilon_by_site), sort_keys=True),
    }


def _render(frame: pd.DataFrame, fmt: str, *, header: bool) -> bytes:
    if fmt == "csv":
        return str(frame.to_csv(index=False, header=header)).encode()
    text = str(frame.to_json(orient="records", lines=True))
    return (text if text.endswith("\n") else text + "\n").encode()


def _model_json(model: ReleasedModel) -> dict[str, Any]:
    return {
        "model_name": model.model_name,
        "dataset": model.dataset,
        "version": model.version,
        "contributors": list(model.contributors),
        "epsilon_by_site": epsilon_json(model.epsilon_by_site),
        "columns": list(model.columns),
    }


def _dashboard_html(model: ReleasedModel | None, releases: list[dict[str, Any]]) -> str:
    from html import escape

    if model is None:
        head = "<p>No global model yet.</p>"
    else:
        eps = "".join(
            f"<tr><td>{escape(s)}</td><td>{e:.3f}</td></tr>"
            for s, e in sorted(model.epsilon_by_site.items())
        )
        head = (
            f"<p>Model <b>{escape(model.model_name)}</b> version <b>{model.version}</b>, "
            f"contributors: {escape(', '.join(model.contributors))}</p>"
            f"<table><tr><th>site</th><th>epsilon spent</th></tr>{eps}</table>"
        )
    rows = "".join(
        f"<tr><td>{escape(str(r['release_id']))}</td><td>{escape(str(r['created_at']))}</td>"
        f"<td>{r['n_rows']}</td><td>{escape(str(r['query']))}</td><td>{r['model_version']}</td></tr>"
        for r in releases
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>fedsynth gateway</title>"
        "<style>body{font-family:sans-serif;margin:2em}"
        "td,th{padding:2px 8px;text-align:left}</style>"
        f"</head><body><h1>fedsynth synthesis gateway</h1>{head}<h2>Releases</h2>"
        "<table><tr><th>release</th><th>created</th><th>rows</th><th>query</th>"
        "<th>model</th></tr>"
        f"{rows}</table></body></html>"
    )

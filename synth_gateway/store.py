"""Release store: every synthetic release lands in DuckDB and in a Parquet file, with provenance.

A release is immutable. Its rows go to ``releases/<release_id>.parquet`` and are appended to the
DuckDB table ``synthetic_rows`` (one column per schema column plus ``release_id``); the table
``releases`` holds one provenance row per release: the model version and its contributors, the
query, the epsilon spent per site, the row count and the SHA-256 of the Parquet file, so that a
reader can check the file against the catalogue.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from fedsynth.errors import StateInUseError
from synth_gateway.ports import epsilon_json

__all__ = ["Provenance", "ReleaseInfo", "ReleaseStore"]

log = logging.getLogger(__name__)

_RELEASES_DDL = """
CREATE TABLE IF NOT EXISTS releases (
    release_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMP,
    dataset VARCHAR,
    model_name VARCHAR,
    model_version BIGINT,
    contributors VARCHAR,
    query VARCHAR,
    n_rows BIGINT,
    epsilon_by_site VARCHAR,
    parquet_path VARCHAR,
    parquet_sha256 VARCHAR,
    requested_by VARCHAR,
    guidance DOUBLE
)
"""
# a catalogue written before the guidance column existed gains it (those releases used 1.0)
_RELEASES_MIGRATIONS = (
    "ALTER TABLE releases ADD COLUMN IF NOT EXISTS guidance DOUBLE DEFAULT 1.0",
)
_RELEASE_COLUMNS = (
    "release_id, created_at, dataset, model_name, model_version, contributors, query, n_rows, "
    "epsilon_by_site, parquet_path, parquet_sha256, requested_by, guidance"
)


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a release came from: model, contributors, query and privacy spent."""

    dataset: str
    model_name: str
    model_version: int
    contributors: tuple[str, ...]
    query: str
    epsilon_by_site: dict[str, float]
    requested_by: str = "anonymous"
    guidance: float = 1.0


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    """What the store recorded for one release."""

    release_id: str
    parquet_path: Path
    parquet_sha256: str
    n_rows: int
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view for HTTP responses."""
        return {
            "release_id": self.release_id,
            "parquet_path": str(self.parquet_path),
            "parquet_sha256": self.parquet_sha256,
            "n_rows": self.n_rows,
            "created_at": self.created_at.isoformat(),
        }


class ReleaseStore:
    """DuckDB catalogue plus one Parquet file per release, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.parquet_dir = self.root / "releases"
        self.db_path = self.root / "releases.duckdb"
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None

    def open(self) -> ReleaseStore:
        """Create the folders and tables; safe to call twice.

        Raises:
            StateInUseError: another process (a second gateway on the same run directory) has
                the catalogue open; DuckDB lets one process write a database file.
        """
        if self._con is None:
            self.parquet_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._con = duckdb.connect(str(self.db_path))
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                raise StateInUseError(
                    f"release store {self.db_path} is in use by another process ({exc}); "
                    "stop the other gateway, or give this one its own --run-dir"
                ) from exc
            self._con.execute(_RELEASES_DDL)
            for statement in _RELEASES_MIGRATIONS:
                self._con.execute(statement)
        return self

    def close(self) -> None:
        """Close the database; safe to call twice."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> ReleaseStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise RuntimeError("ReleaseStore is not open")
        return self._con

    def record(self, release_id: str, rows: pd.DataFrame, prov: Provenance) -> ReleaseInfo:
        """Write ``rows`` as release ``release_id`` (Parquet first, then the catalogue)."""
        path = self.parquet_dir / f"{release_id}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        rows.to_parquet(tmp, index=False)
        tmp.replace(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        created = datetime.now(UTC)
        with self._lock:
            self._append_rows(release_id, path)
            self.con.execute(
                f"INSERT INTO releases ({_RELEASE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    release_id,
                    created.replace(tzinfo=None),
                    prov.dataset,
                    prov.model_name,
                    prov.model_version,
                    json.dumps(list(prov.contributors)),
                    prov.query,
                    len(rows),
                    json.dumps(epsilon_json(prov.epsilon_by_site), sort_keys=True),
                    str(path),
                    digest,
                    prov.requested_by,
                    prov.guidance,
                ],
            )
        log.info("release %s: %d rows -> %s", release_id, len(rows), path)
        return ReleaseInfo(release_id, path, digest, len(rows), created)

    def _append_rows(self, release_id: str, path: Path) -> None:
        src = "(SELECT ? AS release_id, * FROM read_parquet(?))"
        exists = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'synthetic_rows'"
        ).fetchone()
        if exists is None or exists[0] == 0:
            self.con.execute(
                f"CREATE TABLE synthetic_rows AS SELECT * FROM {src}", [release_id, str(path)]
            )
        else:
            self.con.execute(
                f"INSERT INTO synthetic_rows BY NAME SELECT * FROM {src}", [release_id, str(path)]
            )

    def releases(self) -> list[dict[str, Any]]:
        """Every release's provenance row, newest first."""
        with self._lock:
            cur = self.con.execute("SELECT * FROM releases ORDER BY created_at DESC")
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def rows(self, release_id: str) -> pd.DataFrame:
        """The rows of one release, read back from DuckDB."""
        with self._lock:
            return self.con.execute(
                "SELECT * EXCLUDE (release_id) FROM synthetic_rows WHERE release_id = ?",
                [release_id],
            ).df()

"""Non-IID partitioning: the real data split by its real sites (hospitals)."""

from __future__ import annotations

import pandas as pd

from fedsynth.data.schema import DatasetSchema
from fedsynth.errors import ConfigError

__all__ = ["split_by_site"]


def split_by_site(df: pd.DataFrame, schema: DatasetSchema) -> dict[str, pd.DataFrame]:
    """Split ``df`` by the schema's site column, sites in sorted order, each index reset.

    The site column stays in each part (it is never modelled). Rows with a missing site raise.

    Raises:
        ConfigError: the schema has no site column, or ``df`` lacks it or has rows without a site.
    """
    site = schema.site_column
    if site is None:
        raise ConfigError(f"schema {schema.name!r} declares no site column")
    if site not in df.columns:
        raise ConfigError(f"data has no site column {site!r}")
    if df[site].isna().any():
        raise ConfigError(f"{int(df[site].isna().sum())} rows have no site in column {site!r}")
    return {
        str(name): part.reset_index(drop=True)
        for name, part in sorted(df.groupby(site, sort=False), key=lambda kv: str(kv[0]))
    }

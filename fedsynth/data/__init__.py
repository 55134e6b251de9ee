"""Dataset schemas, validation, federated preprocessing and non-IID partitioning."""

from fedsynth.data.encoder import Block, FeatureEncoder, NumericTransform
from fedsynth.data.partition import split_by_site
from fedsynth.data.patterns import PATTERN_HISTOGRAM, MissingPatterns
from fedsynth.data.preprocess import (
    Histograms,
    NoiseMechanism,
    accounted_histograms,
    default_histogram_noise,
    exact_histograms,
    histogram_layout,
    site_histograms,
)
from fedsynth.data.schema import Bounds, ColumnKind, ColumnRole, ColumnSpec, DatasetSchema
from fedsynth.data.validate import (
    Problem,
    SchemaValidationError,
    load_site_file,
    validate_frame,
)

__all__ = [
    "PATTERN_HISTOGRAM",
    "Block",
    "Bounds",
    "ColumnKind",
    "ColumnRole",
    "ColumnSpec",
    "DatasetSchema",
    "FeatureEncoder",
    "Histograms",
    "MissingPatterns",
    "NoiseMechanism",
    "NumericTransform",
    "Problem",
    "SchemaValidationError",
    "accounted_histograms",
    "default_histogram_noise",
    "exact_histograms",
    "histogram_layout",
    "load_site_file",
    "site_histograms",
    "split_by_site",
    "validate_frame",
]

"""What every party of a federation must agree on, as plain values that travel in messages.

The aggregator fits the feature encoder from the sites' summed DP histograms, picks the model
configuration and seed, and publishes them with every global model version (the ``encoder``
field of ``GlobalModel``). A site or the gateway rebuilds the identical model from that blob and
loads the version's flat parameter vector into it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsynth.codec.pipeline import Pipeline
from fedsynth.codec.quantize import QuantizedVector
from fedsynth.data.encoder import FeatureEncoder
from fedsynth.errors import MessageError
from fedsynth.model.config import DiffusionConfig

if TYPE_CHECKING:
    from fedsynth.model.tabddpm import TabularDiffusion

__all__ = [
    "MODEL_CODEC",
    "UPDATE_CODEC",
    "ModelSpec",
    "decode_delta",
    "decode_vector",
    "encode_vector",
    "load_model_code",
]

#: Plain-mode model updates: 8-bit stochastic quantization, then zstd.
UPDATE_CODEC = "quantize8|zstd"
#: Global model versions are published losslessly.
MODEL_CODEC = "float32|zstd"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Encoder, model configuration and initialisation seed of one federation's model.

    ``secure_terms`` (secure mode only) are the fixed-point and staleness terms every site needs
    besides the cohort roster (:meth:`aggregator.cohorts.CohortConfig.site_terms`).
    """

    encoder: FeatureEncoder
    config: DiffusionConfig
    seed: int
    secure_terms: dict[str, Any] | None = None

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes for the ``GlobalModel.encoder`` field."""
        return json.dumps(
            {
                "encoder": self.encoder.to_dict(),
                "config": self.config.to_dict(),
                "seed": self.seed,
                "secure_terms": self.secure_terms,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ModelSpec:
        """Inverse of :meth:`to_bytes`; a MessageError names what is malformed."""
        try:
            blob: dict[str, Any] = json.loads(raw)
            return cls(
                FeatureEncoder.from_dict(blob["encoder"]),
                DiffusionConfig.from_dict(blob["config"]),
                int(blob["seed"]),
                blob.get("secure_terms"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise MessageError(f"malformed model spec in GlobalModel: {exc}") from exc

    def build(self, params: np.ndarray | None = None) -> TabularDiffusion:
        """A fresh model; loads ``params`` when given.

        torch is imported here, not with this module: the aggregator reads specs and vectors on
        every restart but builds a model only once, when it fits the encoder (it may load the
        code ahead, off its event loop: :func:`load_model_code`).
        """
        from fedsynth.model.tabddpm import TabularDiffusion

        model = TabularDiffusion(self.encoder, self.config, self.seed)
        if params is not None:
            model.load_flat_parameters(params)
        return model


def encode_vector(vector: np.ndarray, codec: str, rng: np.random.Generator) -> tuple[bytes, int]:
    """Encode a float vector with the named codec pipeline; returns bytes and raw size."""
    data, reports = Pipeline.parse(codec).encode(vector, rng)
    return data, reports[0].bytes_in if reports else vector.nbytes


def decode_vector(data: bytes, codec: str, n_parameters: int) -> np.ndarray:
    """Decode a float32 vector of ``n_parameters`` values; MessageError if it does not fit."""
    vector = _decoded(data, codec, n_parameters, compact=False)
    assert isinstance(vector, np.ndarray)
    return vector.astype(np.float32, copy=False)


def decode_delta(data: bytes, codec: str, n_parameters: int) -> QuantizedVector | np.ndarray:
    """Decode an update's delta of ``n_parameters`` values for aggregation: a quantized codec's
    levels as they came (:class:`~fedsynth.codec.quantize.QuantizedVector`, summed without
    forming its floats), any other codec's float32 vector; MessageError if it does not fit."""
    vector = _decoded(data, codec, n_parameters, compact=True)
    if isinstance(vector, np.ndarray):
        return vector.astype(np.float32, copy=False)
    return vector


def _decoded(
    data: bytes, codec: str, n_parameters: int, compact: bool
) -> QuantizedVector | np.ndarray:
    try:
        pipeline = Pipeline.parse(codec)
        vector = pipeline.decode_compact(data) if compact else pipeline.decode(data, np.float32)
    except MessageError:
        raise
    except Exception as exc:  # the codec's own errors are ConfigError or library errors
        raise MessageError(f"cannot decode vector with codec {codec!r}: {exc}") from exc
    if vector.shape != (n_parameters,):
        raise MessageError(f"vector has {vector.size} values, message says {n_parameters}")
    return vector


def load_model_code() -> None:
    """Import the model's code (torch) now, so that the first :meth:`ModelSpec.build` does not
    pay for importing torch. An aggregator starting a federation calls it on a worker thread
    while it waits for the sites, instead of importing torch when version 0 is due."""
    import fedsynth.model.tabddpm  # noqa: F401 - imported for its side effect of loading torch

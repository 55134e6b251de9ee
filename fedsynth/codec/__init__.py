"""Update codecs: stochastic quantization, top-k with error feedback, zstd, named pipelines.

Every codec is a pure encode/decode pair over bytes and reports its sizes
(:class:`CodecReport`). Chunking lives in :mod:`fedsynth.codec.chunk`.
"""

from __future__ import annotations

from fedsynth.codec.pipeline import Pipeline
from fedsynth.codec.quantize import QuantizedVector, dequantize, quantize, read_levels
from fedsynth.codec.report import CodecReport
from fedsynth.codec.topk import ErrorFeedback, topk_decode, topk_encode
from fedsynth.codec.zstd import zstd_compress, zstd_decompress

__all__ = [
    "CodecReport",
    "ErrorFeedback",
    "Pipeline",
    "QuantizedVector",
    "dequantize",
    "quantize",
    "read_levels",
    "topk_decode",
    "topk_encode",
    "zstd_compress",
    "zstd_decompress",
]

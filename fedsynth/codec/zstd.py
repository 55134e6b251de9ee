"""zstd framing of byte strings (RFC 8878) with a bound on the decompressed size."""

from __future__ import annotations

import zstandard

from fedsynth.errors import MessageError

__all__ = ["MAX_DECOMPRESSED", "zstd_compress", "zstd_decompress"]

MAX_DECOMPRESSED = 1 << 31


def zstd_compress(data: bytes, level: int = 3) -> bytes:
    """Compress into one zstd frame that records its content size."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def zstd_decompress(frame: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes:
    """Decompress one zstd frame, refusing frames that would exceed ``max_size`` bytes.

    Raises:
        MessageError: a corrupt frame, or one that is too large.
    """
    try:
        params = zstandard.get_frame_parameters(frame)
        if params.content_size > max_size:
            raise MessageError(f"zstd frame declares {params.content_size} > {max_size} bytes")
        return zstandard.ZstdDecompressor().decompress(frame, max_output_size=max_size)
    except zstandard.ZstdError as exc:
        raise MessageError(f"corrupt zstd frame: {exc}") from exc

"""fedsynth core: pure, broker-free library (model, privacy, secagg, codec, data, eval)."""

from fedsynth.errors import FedSynthError

__all__ = ["FedSynthError", "__version__"]
__version__ = "0.1.0"

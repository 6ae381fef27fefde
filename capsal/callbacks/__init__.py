"""Lightning callbacks: caption-guided saliency during validation (galleries and localisation metrics)."""

from capsal.callbacks.saliency import SaliencyCallback

__all__ = ["SaliencyCallback"]

"""Explainers: ``build_explainer(name, **options).explain(model, items, mask, grid, tokens, sample_ids) -> Saliency``.

Importing this package registers the built-in explainers. A new explainer subclasses :class:`Explainer` and
implements ``_attribute(model, items, grid, sentences)`` (``sentences``: the resolved :class:`Sentences`).
"""

from capsal.explainers import (  # noqa: F401 (registers them)
    attention_weights,
    baselines,
    caption_guided,
    captum_adapter,
    gradcam,
    gradient,
    relevancy,
)
from capsal.explainers.base import Explainer, Seeds, Sentences
from capsal.explainers.registry import (
    available_explainers,
    build_explainer,
    build_explainers,
    get_explainer,
    register_explainer,
)
from capsal.explainers.saliency import Saliency
from capsal.types import ItemLayout

__all__ = [
    "Explainer",
    "ItemLayout",
    "Saliency",
    "Seeds",
    "Sentences",
    "available_explainers",
    "build_explainer",
    "build_explainers",
    "get_explainer",
    "register_explainer",
]

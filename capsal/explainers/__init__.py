"""Explainers: ``build_explainer(name, **options).explain(model, items, mask, grid, tokens) -> Saliency``."""

from capsal.explainers.base import Explainer
from capsal.explainers.registry import available_explainers, build_explainer, get_explainer, register_explainer
from capsal.explainers.saliency import ItemLayout, Saliency

__all__ = [
    "Explainer",
    "ItemLayout",
    "Saliency",
    "available_explainers",
    "build_explainer",
    "get_explainer",
    "register_explainer",
]

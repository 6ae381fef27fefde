"""Importing this module registers every built-in explainer."""

from capsal.explainers import baselines, caption_guided, gradient, soft_attention  # noqa: F401

"""Importing this module registers every built-in explainer."""

from capsal.explainers import caption_guided  # noqa: F401

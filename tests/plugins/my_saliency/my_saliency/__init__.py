"""The README's example explainer plugin."""

"""Localisation and captioning metrics."""

"""Options capsal no longer has: what replaced them (for the one line a command prints when one is set) and how a
config recorded with them (a checkpoint's, a feature cache's) is read today."""

from __future__ import annotations

from typing import Any

CROP_HINT = "the datamodule frames the images now; set datamodule.protocol=center_crop (or full, the default) instead"
# by the last part(s) of their dotted key
REMOVED = {"center_crop": CROP_HINT, "backbone.crop": CROP_HINT}


def current_backbone_config(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded backbone config as today's backbones take it: the ``crop`` that configs recorded before
    ``datamodule.protocol`` framed images is dropped when it was the whole-image ``"resize"`` (or null); any other
    crop framed the images differently and is kept, so that it is refused or compares unequal."""
    if config.get("crop", "resize") in (None, "resize"):
        return {key: value for key, value in config.items() if key != "crop"}
    return dict(config)

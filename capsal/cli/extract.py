"""``capsal-extract``: cache backbone features of a dataset's splits, a thin Hydra app around :func:`extract`."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from capsal.cli.command import command
from capsal.cli.settings import ExtractSettings
from capsal.config_schema import check_config
from capsal.datamodules.features import extract_split, read_manifest, skipped_files
from capsal.datamodules.files import REPORT_NAMES
from capsal.errors import UserError

log = logging.getLogger("capsal")


def extract(cfg: DictConfig) -> dict[str, str]:
    """Extract every split of ``cfg.splits`` into ``cfg.features_dir``; returns split -> cache folder.

    The images are framed by the datamodule's ``protocol`` (recorded in the cache), not by the backbone.
    """
    check_config(cfg, ExtractSettings)
    if not cfg.get("features_dir"):
        raise UserError("features_dir is not set; pass features_dir=/path/to/cache")
    splits = [str(s) for s in cfg.splits]
    datamodule = instantiate(cfg.datamodule)
    protocol = getattr(datamodule, "protocol", "full")
    written: dict[str, str] = {}
    skipped: dict[str, list[str]] = {}
    for split in splits:
        out = extract_split(
            datamodule,
            split,
            cfg.backbone,
            cfg.features_dir,
            batch_size=int(cfg.batch_size),
            frames_per_pass=int(cfg.frames_per_pass),
            shard_size=int(cfg.shard_size),
            num_workers=int(cfg.num_workers),
            device=cfg.device,
            seed=int(cfg.seed),
            progress=bool(cfg.progress),
        )
        manifest = read_manifest(out)
        count = sum(len(shard["ids"]) for shard in manifest["shards"])
        grids = f"grids {manifest['grid_shape']} (T, h, w, d)"
        print(f"{split}: {count} samples ({protocol} images), {grids} in {out}")
        written[split] = str(out)
        skipped[split] = skipped_files(manifest)
    print(skipped_summary(skipped))
    wordless = {split: len(getattr(datamodule, "wordless", {}).get(split, [])) for split in splits}
    if any(wordless.values()):
        counts = ", ".join(f"{split} {n}" for split, n in wordless.items() if n)
        print(f"skipped captions: {sum(wordless.values())} ({counts}) with no word after tokenization")
    features_dir = Path(cfg.features_dir).expanduser()
    print(f"train from the cache with: datamodule.features_dir={features_dir} (and model.backbone set to the backbone)")
    return written


def skipped_summary(skipped: dict[str, list[str]]) -> str:
    """The one line ending every extraction: how many files were skipped per split, and the first few."""
    paths = [p for split_paths in skipped.values() for p in split_paths]
    if not paths:
        return "skipped files: none"
    counts = ", ".join(f"{split} {len(p)}" for split, p in skipped.items() if p)
    more = f" ... and {len(paths) - REPORT_NAMES} more" if len(paths) > REPORT_NAMES else ""
    return (
        f"skipped files: {len(paths)} ({counts}) missing, empty, unreadable or failing to decode, left out of the "
        f"cache: {', '.join(paths[:REPORT_NAMES])}{more}"
    )


main = command("capsal-extract", "extract", extract)


if __name__ == "__main__":
    main()

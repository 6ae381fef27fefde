"""MSVD, the Microsoft Research Video Description corpus: 1970 YouTube clips, about 40 English captions each.

Layout under ``root``::

    YouTubeClips/<clip id>.avi       (e.g. -4wsuPCjDBc_5_15.avi; other containers FFmpeg reads work too)
    AllVideoDescriptions.txt         lines "<clip id> <caption words>"; lines starting with '#' are comments
    youtube_mapping.txt              (optional) lines "<clip id> vid<N>", the order of the standard split

Splits (the standard one of Venugopalan et al. 2015 / Yao et al. 2015): the clips that have captions, ordered by
``youtube_mapping.txt`` (vid1..vid1970) when present, else by clip id (a warning, once, says that is not the
standard split); the first 1200 are train, the next 100 val, the next 670 test (clips beyond 1970 are unused).
A smaller copy (fewer than 1970 clips) is split in the same order with proportional sizes: val
``max(1, round(n * 100 / 1970))``, test ``max(1, round(n * 670 / 1970))``, train the rest.
Splits are assigned before files are checked, so a missing or broken clip never moves others between splits: it is
dropped from its split and reported.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from capsal.datamodules.base import SPLITS
from capsal.datamodules.files import MediaRecord, VideoFileDataModule, split_counts
from capsal.errors import UserError
from capsal.types import Caption

log = logging.getLogger("capsal")

STANDARD_SPLIT = (1200, 100, 670)


def read_descriptions(text: str) -> dict[str, list[str]]:
    """Clip id -> its captions, in file order."""
    captions: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        clip, _, caption = line.partition(" ")
        if caption.strip():
            captions[clip].append(caption.strip())
    return dict(captions)


def read_mapping(text: str) -> dict[str, int]:
    """Clip id -> N of its ``vidN`` name in ``youtube_mapping.txt``."""
    order = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].startswith("vid") and parts[1][3:].isdigit():
            order[parts[0]] = int(parts[1][3:])
    return order


class MSVDDataModule(VideoFileDataModule):
    """MSVD clips decoded to ``num_frames`` evenly spaced frames (see the module doc for layout and splits)."""

    name = "msvd"
    layout = "YouTubeClips/<clip id>.avi and AllVideoDescriptions.txt"
    readme = "Datasets > MSVD"
    _warned_order = False  # the non-standard split is reported once per datamodule

    def check_layout(self) -> None:
        self.require("YouTubeClips", "folder", media=True)
        self.require("AllVideoDescriptions.txt")

    def clip_order(self, clips: list[str]) -> list[str]:
        mapping_file = self.root / "youtube_mapping.txt"
        mapping = read_mapping(mapping_file.read_text(errors="replace")) if mapping_file.is_file() else {}
        if not mapping and not self._warned_order:
            self._warned_order = True
            log.warning(
                f"msvd: no {mapping_file} (or no 'clip vidN' line in it), so clips are split in clip-id order: "
                f"NOT the standard 1200/100/670 split, which follows the mapping's vid1..vid1970 order; add "
                f"youtube_mapping.txt to compare with published numbers"
            )
        return sorted(clips, key=lambda c: (0, mapping[c], c) if c in mapping else (1, 0, c))

    def split_records(self, split: str) -> list[MediaRecord]:
        """The records of ``split`` before files are checked."""
        text = (self.root / "AllVideoDescriptions.txt").read_text(encoding="utf-8", errors="replace")
        captions = read_descriptions(text)
        if not captions:
            raise UserError(f"msvd: {self.root / 'AllVideoDescriptions.txt'} holds no '<clip id> <caption>' lines")
        clips = self.clip_order(list(captions))
        counts = split_counts(len(clips), STANDARD_SPLIT)
        position = SPLITS.index(split)
        start = sum(counts[:position])
        folder = self.root / "YouTubeClips"
        files = {p.stem: p for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}
        return [
            MediaRecord(clip, files.get(clip, folder / f"{clip}.avi"), [Caption(t) for t in captions[clip]])
            for clip in clips[start : start + counts[position]]
        ]

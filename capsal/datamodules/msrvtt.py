"""MSR-VTT: 10,000 web clips (about 15 s each), 20 English captions each (Xu et al., 2016).

Layout under ``root`` (the 2016 release; the annotation files as distributed)::

    train_val_videodatainfo.json     {"videos": [{"video_id": "video0", "split": "train", ...}, ...],
    test_videodatainfo.json           "sentences": [{"video_id": "video0", "caption": "...", "sen_id": 0}, ...]}
    videos/video<N>.mp4              (or TrainValVideo/ and TestVideo/, or train-video/ and test-video/)

Splits come from each video's ``split`` field (``train`` -> train, ``validate`` -> val, ``test`` -> test: 6513 / 497 /
2990 clips). Either JSON file may be absent as long as the requested split is in the other. Clips are ordered by
their number (video0, video1, ...), captions by ``sen_id``. Clips that are missing, empty or unreadable are dropped
from their split and reported.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from capsal.datamodules.files import MediaRecord, VideoFileDataModule
from capsal.errors import UserError
from capsal.types import Caption

INFO_FILES = ("train_val_videodatainfo.json", "test_videodatainfo.json")
VIDEO_FOLDERS = ("videos", "TrainValVideo", "TestVideo", "train-video", "test-video")
SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def _natural(video_id: str) -> tuple[int, str]:
    digits = re.findall(r"\d+", video_id)
    return (int(digits[-1]) if digits else -1, video_id)


def read_info(data: dict, path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Video id -> split, and video id -> captions (by ``sen_id``), of one ``*_videodatainfo.json``."""
    if not isinstance(data, dict) or "videos" not in data or "sentences" not in data:
        raise UserError(f"{path} is not an MSR-VTT info file (it needs 'videos' and 'sentences'); re-download it")
    splits = {}
    for video in data["videos"]:
        split = SPLIT_NAMES.get(str(video.get("split", "")).lower())
        if split is None:
            raise UserError(f"{path}: video {video.get('video_id')} has unknown split {video.get('split')!r}")
        splits[str(video["video_id"])] = split
    sentences: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for index, sentence in enumerate(data["sentences"]):
        sentences[str(sentence["video_id"])].append((int(sentence.get("sen_id", index)), str(sentence["caption"])))
    return splits, {vid: [text.strip() for _, text in sorted(items)] for vid, items in sentences.items()}


class MSRVTTDataModule(VideoFileDataModule):
    """MSR-VTT clips decoded to ``num_frames`` evenly spaced frames (see the module doc for layout and splits)."""

    name = "msrvtt"
    layout = "train_val_videodatainfo.json and/or test_videodatainfo.json, and videos/video<N>.mp4"
    readme = "Datasets > MSR-VTT"
    _info: tuple[dict[str, str], dict[str, list[str]]] | None = None  # read once, by info()

    def check_layout(self) -> None:
        if not any((self.root / name).is_file() for name in INFO_FILES):
            self.require(INFO_FILES[0])
        if not any((self.root / name).is_dir() for name in VIDEO_FOLDERS):
            self.require("videos", "folder", media=True)

    def info(self) -> tuple[dict[str, str], dict[str, list[str]]]:
        """Video id -> split and video id -> captions, over the info files present (read once)."""
        if self._info is None:
            splits: dict[str, str] = {}
            captions: dict[str, list[str]] = {}
            for name in INFO_FILES:
                path = self.root / name
                if path.is_file():
                    try:
                        data = json.loads(path.read_text(encoding="utf-8"))
                    except (OSError, ValueError) as error:
                        raise UserError(f"cannot parse {path} ({error}); re-download it") from error
                    file_splits, file_captions = read_info(data, path)
                    splits.update(file_splits)
                    captions.update(file_captions)
            self._info = (splits, captions)
        return self._info

    def video_files(self) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for folder in VIDEO_FOLDERS:
            if (self.root / folder).is_dir():
                files.update({p.stem: p for p in sorted((self.root / folder).iterdir()) if p.is_file()})
        return files

    def split_records(self, split: str) -> list[MediaRecord]:
        """The records of ``split`` before files are checked."""
        splits, captions = self.info()
        ids = sorted((vid for vid, s in splits.items() if s == split and captions.get(vid)), key=_natural)
        if not ids:
            raise UserError(
                f"msrvtt: no {split} video with captions in {', '.join(INFO_FILES)} under {self.root}; "
                f"add the info file of that split (README section '{self.readme}')"
            )
        files = self.video_files()
        fallback = self.root / "videos"
        return [
            MediaRecord(vid, files.get(vid, fallback / f"{vid}.mp4"), [Caption(t) for t in captions[vid]])
            for vid in ids
        ]

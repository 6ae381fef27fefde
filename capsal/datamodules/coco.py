"""MS COCO Captions (2014): about 5 captions per image, captioning only (no phrases or boxes).

Layout under ``root`` (cocodataset.org: "2014 Train images", "2014 Val images", "2014 Train/Val annotations")::

    annotations/captions_train2014.json   annotations/captions_val2014.json   train2014/   val2014/
    dataset_coco.json                     (optional: the Karpathy split, from Karpathy's "deepimagesent" page)

Splits: with ``karpathy_split=true`` and ``dataset_coco.json`` present, its ``split`` field decides (``train`` and
``restval`` -> train, ``val`` -> val, ``test`` -> test; 113k/5k/5k images) and its ``raw`` sentences are the
captions. Otherwise train is all of train2014, and val2014 is split in two by a seeded rule: its images sorted by id
are shuffled with ``numpy.random.default_rng(seed)``; the first half (rounded up) is val, the rest test.
Samples are ordered by image id; ``sample_id`` is the file name without extension. Images are resized to
``image_size`` x ``image_size``: the whole image (``protocol=full``) or its central square (``protocol=center_crop``,
the framing of the paper's Table 2, so a captioner trained here sees what it is scored on). Images listed but missing
or empty on disk are skipped and reported.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from typing_extensions import Unpack

from capsal.constraints import PositiveInt
from capsal.datamodules.base import LoaderOptions, check_positive
from capsal.datamodules.files import FileDataModule, ImageDataset, MediaRecord
from capsal.datamodules.framing import Protocol
from capsal.errors import UserError
from capsal.types import Caption

KARPATHY_FILE = "dataset_coco.json"
KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot parse {path} ({error}); re-download it") from error


def read_captions_json(path: Path, image_folder: Path) -> list[MediaRecord]:
    """Records of a ``captions_*.json`` file: one per image with captions, ordered by image id."""
    data = _load_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise UserError(f"{path} is not a COCO captions file (it needs 'images' and 'annotations'); re-download it")
    captions: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for ann in data["annotations"]:
        captions[int(ann["image_id"])].append((int(ann.get("id", 0)), str(ann["caption"]).strip()))
    records = []
    for image in sorted(data["images"], key=lambda im: int(im["id"])):
        texts = [text for _, text in sorted(captions.get(int(image["id"]), []))]
        if texts:
            name = str(image["file_name"])
            records.append(MediaRecord(Path(name).stem, image_folder / name, [Caption(t) for t in texts]))
    return records


def read_karpathy(path: Path, root: Path, split: str) -> list[MediaRecord]:
    """Records of one split of the Karpathy ``dataset_coco.json``, ordered by image id."""
    data = _load_json(path)
    if not isinstance(data, dict) or "images" not in data:
        raise UserError(f"{path} is not a Karpathy split file (it needs 'images'); re-download it or remove it")
    records = []
    for image in sorted(data["images"], key=lambda im: int(im.get("cocoid", im.get("imgid", 0)))):
        if image.get("split") not in KARPATHY_SPLITS[split]:
            continue
        texts = [str(s["raw"]).strip() for s in image.get("sentences", [])]
        name = str(image["filename"])
        if texts:
            records.append(MediaRecord(Path(name).stem, root / image["filepath"] / name, [Caption(t) for t in texts]))
    return records


class CocoCaptionsDataModule(FileDataModule):
    """COCO Captions 2014 images and reference captions (see the module doc for layout and splits)."""

    name = "coco_captions"
    layout = "annotations/captions_train2014.json, annotations/captions_val2014.json, train2014/ and val2014/"
    readme = "Datasets > COCO Captions"

    def __init__(
        self,
        root: str,
        image_size: PositiveInt | None = 299,
        karpathy_split: bool = True,
        protocol: Protocol = "full",
        **loader: Unpack[LoaderOptions],
    ):
        super().__init__(root, protocol=protocol, **loader)
        if image_size is not None:
            check_positive(image_size=image_size)
        self.image_size = int(image_size) if image_size is not None else None
        self.karpathy_split = bool(karpathy_split)

    @property
    def uses_karpathy(self) -> bool:
        return self.karpathy_split and (self.root / KARPATHY_FILE).is_file()

    def split_records(self, split: str) -> list[MediaRecord]:
        """The records of ``split`` before files are checked."""
        if self.uses_karpathy:
            return read_karpathy(self.root / KARPATHY_FILE, self.root, split)
        source = "train" if split == "train" else "val"
        records = read_captions_json(
            self.require(f"annotations/captions_{source}2014.json"), self.require(f"{source}2014", "folder", media=True)
        )
        if split == "train":
            return records
        order = np.random.default_rng(self.seed).permutation(len(records))
        half = (len(records) + 1) // 2
        chosen = sorted(order[:half] if split == "val" else order[half:])
        return [records[i] for i in chosen]

    def build_split(self, split: str) -> ImageDataset:
        records = self.usable(self.split_records(split), split)
        return ImageDataset(records, self.name, split, self.image_size, self.protocol)

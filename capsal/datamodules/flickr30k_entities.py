"""Flickr30k Entities: Flickr30k images, five captions each, noun phrases linked to boxes (Plummer et al., 2015).

Layout under ``root`` (the official release, github.com/BryanPlummer/flickr30k_entities, plus the Flickr30k images)::

    flickr30k-images/<id>.jpg   Sentences/<id>.txt   Annotations/<id>.xml   train.txt  val.txt  test.txt

``Sentences/<id>.txt`` holds one caption per line with phrases marked ``[/EN#<chain id>/<type>/<type>... words]``;
the phrase's ``category`` is its first type, its word span counts ``capsal.text.tokenize`` words of the plain caption
(the caption with the markup removed; stray brackets inside a phrase are dropped, nested markup is parsed too).
``Annotations/<id>.xml`` is PASCAL-VOC-like: each ``<object>`` names one or more chain ids and has either a
``<bndbox>`` or ``<nobndbox>``/``<scene>`` flags. A phrase's ``boxes`` are all the boxes of its chain (several
objects may share a chain id, one object may carry several ids); chain ``0`` (type ``notvisual``), scene and
no-box chains have none. The XML coordinates are 1-based inclusive pixels; they are converted to 0-based inclusive
(as the official ``flickr30k_entities_utils.py`` does).

``protocol`` (README "Datasets > Flickr30k Entities") frames the images for training, extraction and scoring:

- ``full``: ``Sample.pixels`` is the whole image resized to ``image_size`` x ``image_size``. Each caption records the
  original ``(H, W)`` (``Caption.original_size``, from the XML's ``<size>``, else the image header) and each phrase
  its original boxes (``Phrase.original_boxes``): maps are scored at the original resolution against them.
- ``center_crop`` (Liu et al.'s protocol, the paper's Table 2): the central square of the image (side: its short
  side, ``capsal.datamodules.framing.center_crop_region``), resized to ``image_size``. ``original_size`` is
  that square, ``original_boxes`` are the boxes moved into it and clipped (``crop_boxes``); a phrase whose boxes all
  fall outside has none and is skipped (and counted) by the metrics.

``Phrase.boxes`` always follow ``Sample.pixels`` (for figures): a box ``(x0, y0, x1, y1)`` of the scored frame
becomes ``(x0 * sx, y0 * sy, (x1 + 1) * sx - 1, (y1 + 1) * sy - 1)`` with ``sx = image_size / width`` (the same
pixels, covered in the resized frame). ``image_size=null`` keeps the stored size (then use ``batch_size=1``).

Ids listed in a split file whose image, sentences or annotation file is missing or empty are skipped and reported.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path

from typing_extensions import Unpack

from capsal.constraints import PositiveInt
from capsal.datamodules.base import LoaderOptions, check_positive
from capsal.datamodules.files import FileDataModule, ImageDataset, MediaRecord
from capsal.datamodules.framing import Protocol, center_crop_region, crop_boxes
from capsal.datamodules.media import image_size_of
from capsal.errors import UserError
from capsal.text import tokenize
from capsal.types import Box, Caption, Phrase

# the phrase types of the release; the first eight (the columns of the paper's Table 1) are the ones with boxes
CATEGORIES = ("people", "clothing", "bodyparts", "animals", "vehicles", "instruments", "scene", "other", "notvisual")
NOT_VISUAL = "0"
_MARK = re.compile(r"\[/EN#(\d+)((?:/[^\s/\]]+)*)\s*")


@dataclass
class ParsedPhrase:
    """A phrase of a Sentences line: its characters in the plain text, chain id and types."""

    start_char: int
    end_char: int
    entity: str
    types: list[str]


def _plain(piece: str) -> str:
    return piece.replace("[", "").replace("]", "")


def _closing(line: str, start: int) -> int:
    """Index of the ``]`` closing a phrase whose words start at ``start`` (inner brackets nest)."""
    depth = 0
    for index in range(start, len(line)):
        if line[index] == "[":
            depth += 1
        elif line[index] == "]":
            if depth == 0:
                return index
            depth -= 1
    return len(line)  # unclosed: the phrase runs to the end of the line


def parse_markup(line: str) -> tuple[str, list[ParsedPhrase]]:
    """Plain text of a Sentences line and its phrases (character spans in that text), in order of their start."""
    pieces: list[str] = []
    phrases: list[ParsedPhrase] = []
    length, position = 0, 0
    while (match := _MARK.search(line, position)) is not None:
        before = _plain(line[position : match.start()])
        pieces.append(before)
        length += len(before)
        close = _closing(line, match.end())
        inner_text, inner_phrases = parse_markup(line[match.end() : close])
        types = [t for t in match.group(2).split("/") if t]
        phrases.append(ParsedPhrase(length, length + len(inner_text), match.group(1), types))
        phrases += [replace(p, start_char=p.start_char + length, end_char=p.end_char + length) for p in inner_phrases]
        pieces.append(inner_text)
        length += len(inner_text)
        position = close + 1
    pieces.append(_plain(line[position:]))
    return "".join(pieces), phrases


def parse_sentence(line: str) -> tuple[Caption, list[str]]:
    """A ``Caption`` (phrases without boxes yet) and the chain id of each of its phrases.

    Phrases with no words (after ``tokenize``) are dropped.
    """
    text, parsed = _collapse(line)
    phrases, entities = [], []
    for p in parsed:
        start = len(tokenize(text[: p.start_char]))
        end = start + len(tokenize(text[p.start_char : p.end_char]))
        if end > start:
            category = p.types[0] if p.types else ("notvisual" if p.entity == NOT_VISUAL else "other")
            phrases.append(Phrase(start, end, category))
            entities.append(p.entity)
    return Caption(text, phrases), entities


def _collapse(line: str) -> tuple[str, list[ParsedPhrase]]:
    """``parse_markup`` with runs of whitespace collapsed to one space, character spans kept consistent."""
    text, parsed = parse_markup(line)
    keep: list[int] = []  # index in the collapsed text of each character of ``text``
    out: list[str] = []
    for char in text:
        keep.append(len(out))
        if not char.isspace():
            out.append(char)
        elif out and out[-1] != " ":
            out.append(" ")
    keep.append(len(out))
    collapsed = "".join(out)
    stripped = collapsed.rstrip(" ")
    parsed = [
        replace(p, start_char=min(keep[p.start_char], len(stripped)), end_char=min(keep[p.end_char], len(stripped)))
        for p in parsed
    ]
    return stripped, parsed


def read_sentences(path: Path) -> list[tuple[Caption, list[str]]]:
    """Every non-empty line of a ``Sentences/<id>.txt`` file, parsed."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [parse_sentence(line) for line in lines if line.strip()]


def read_annotation(path: Path) -> tuple[dict[str, list[Box]], tuple[int, int] | None]:
    """Chain id -> its boxes, 0-based inclusive ``(x0, y0, x1, y1)`` in original pixels (boxless chains absent), and
    the image ``(width, height)`` the file records (None when it has no ``<size>``)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as error:
        raise UserError(f"cannot parse annotation {path} ({error}); re-download Flickr30k Entities") from error
    boxes: dict[str, list[Box]] = {}
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        try:
            x0, y0, x1, y1 = (float(box.findtext(tag, "")) - 1 for tag in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as error:
            raise UserError(f"annotation {path} has a box with a missing or non-numeric coordinate") from error
        for name in obj.iter("name"):
            if name.text and name.text.strip():
                boxes.setdefault(name.text.strip(), []).append((x0, y0, x1, y1))
    width, height = root.findtext("size/width"), root.findtext("size/height")
    try:
        size = (int(width), int(height)) if width and height else None
    except ValueError:
        size = None
    return boxes, size


def scale_box(box: Box, sx: float, sy: float) -> Box:
    """An inclusive pixel box in a frame scaled by ``(sx, sy)``: the same pixels, covered in the new frame."""
    x0, y0, x1, y1 = box
    nx0, ny0 = x0 * sx, y0 * sy
    return (nx0, ny0, max(nx0, (x1 + 1) * sx - 1), max(ny0, (y1 + 1) * sy - 1))


@dataclass
class Flickr30kRecord(MediaRecord):
    """A Flickr30k Entities image: ``entities[c][p]`` is the chain id of phrase ``p`` of caption ``c``."""

    entities: list[list[str]] = field(default_factory=list)

    def keep_captions(self, indices) -> Flickr30kRecord:
        kept = super().keep_captions(indices)
        return replace(kept, entities=[self.entities[i] for i in indices])


class Flickr30kEntitiesDataset(ImageDataset):
    """Images framed by the protocol, with captions whose phrases carry boxes in the scored and the pixel frames."""

    def captions_at(self, index: int) -> list[Caption]:
        record = self.records[index]
        assert isinstance(record, Flickr30kRecord) and record.annotation is not None
        chains, recorded = read_annotation(record.annotation)
        width, height = recorded or image_size_of(record.path)  # the XML size: no image needed (cached features)
        top = left = 0
        if self.protocol == "center_crop":
            top, left, side = center_crop_region(height, width)
            height = width = side
        sx = sy = 1.0
        if self.image_size is not None:
            size = self.image_size
            new_h, new_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
            sx, sy = new_w / width, new_h / height
        captions = []
        for caption, entities in zip(record.captions, record.entities, strict=True):
            phrases = []
            for phrase, entity in zip(caption.phrases, entities, strict=True):
                boxes = chains.get(entity, []) if entity != NOT_VISUAL else []
                if self.protocol == "center_crop":
                    boxes = crop_boxes(boxes, top, left, height)
                phrases.append(replace(phrase, boxes=[scale_box(b, sx, sy) for b in boxes], original_boxes=boxes))
            captions.append(Caption(caption.text, phrases, original_size=(height, width)))
        return captions


class Flickr30kEntitiesDataModule(FileDataModule):
    """Flickr30k Entities images, captions and grounded noun phrases (see the module doc for the layout)."""

    categories = CATEGORIES[:-1]  # per-category columns of the localisation metrics (notvisual phrases have no box)
    name = "flickr30k_entities"
    layout = "flickr30k-images/<id>.jpg, Sentences/<id>.txt, Annotations/<id>.xml and train.txt/val.txt/test.txt"
    readme = "Datasets > Flickr30k Entities"

    def __init__(
        self,
        root: str,
        image_size: PositiveInt | None = 299,
        protocol: Protocol = "full",
        **loader: Unpack[LoaderOptions],
    ):
        super().__init__(root, protocol=protocol, **loader)
        if image_size is not None:
            check_positive(image_size=image_size)
        self.image_size = int(image_size) if image_size is not None else None
        self.require("flickr30k-images", "folder", media=True)
        for folder in ("Sentences", "Annotations"):
            self.require(folder, "folder")

    def split_ids(self, split: str) -> list[str]:
        path = self.require(f"{split}.txt")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]

    def build_split(self, split: str) -> Flickr30kEntitiesDataset:
        ids = self.split_ids(split)
        records, missing = [], []
        for image_id in ids:
            sentences = self.root / "Sentences" / f"{image_id}.txt"
            annotation = self.root / "Annotations" / f"{image_id}.xml"
            absent = [p for p in (sentences, annotation) if not p.is_file() or p.stat().st_size == 0]
            if absent:
                missing.append(absent[0])  # one file per skipped id: the count is of samples, not files
                continue
            parsed = read_sentences(sentences)
            records.append(
                Flickr30kRecord(
                    sample_id=image_id,
                    path=self.root / "flickr30k-images" / f"{image_id}.jpg",
                    captions=[caption for caption, _ in parsed],
                    annotation=annotation,
                    entities=[entities for _, entities in parsed],
                )
            )
        records = self.usable(records, split)
        # ids without sentences/annotation join the split's skipped files: one summary line (setup, capsal-extract)
        self.skipped[split] = [*missing, *self.skipped.get(split, [])] if self.features_dir is None else missing
        self._split_sizes[split] = len(ids)
        records = [r for r in records if r.captions]
        return Flickr30kEntitiesDataset(records, self.name, split, self.image_size, self.protocol)

"""Writers of realistic miniature copies of the real datasets in their published layouts, shared by the tests.

``write_flickr30k_entities`` and ``write_msrvtt`` write copies with the real data's *shape*: non-square JPEGs up to
500 px, five captions per image (some of 25-80 words) with multi-type phrases, ``notvisual`` chains, scene and no-box
objects, an object carrying two chain ids, a listed id without files; MSR-VTT's two ``*_videodatainfo.json`` files with
20 captions per clip (up to 40 words) and one clip that fails mid-decode. Each returns what it wrote (counts the
tests check against).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from capsal.datamodules.media import VideoDecodeError, decode_video, probe_video


# -- videos ------------------------------------------------------------------------------------------------------------
def write_grey_video(path: Path, frames: int = 4, level: int = 200, size: tuple[int, int] = (16, 24)) -> Path:
    """A short mpeg4 clip of uniform grey frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), level, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_half_corrupt_video(path: Path, frames: int = 12) -> Path:
    """An mp4 whose header (moved to the front) opens fine but whose second half is zeros: decoding fails midway."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    path.write_bytes(bytes(data))
    assert probe_video(path) is None  # the header is fine: the cheap checks keep it
    try:  # it fails while decoding
        decode_video(path, 4, 8)
    except VideoDecodeError as error:
        assert "cannot decode video" in str(error)
    else:
        raise AssertionError(f"{path} decoded although its second half is zeros")
    return path


def write_moving_video(path: Path, seed: int, frames: int = 8, size: tuple[int, int] = (48, 64)) -> Path:
    """A short H.264 clip: a coloured square moving over a textured background (never black)."""
    rng = np.random.default_rng(seed)
    height, width = size
    background = rng.integers(60, 200, (height, width, 3), dtype=np.uint8)
    colour = rng.integers(0, 256, 3, dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for t in range(frames):
            image = background.copy()
            x = (4 + 5 * t) % (width - 12)
            image[10:22, x : x + 12] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# -- Flickr30k Entities ------------------------------------------------------------------------------------------------
FILLER = " ".join(
    [
        "who is standing near the old wooden fence on a bright sunny afternoon while other people walk past slowly",
        "and talk about the weather the city the river and the long road that goes all the way down to the sea",
        "behind the tall green trees of the park",
    ]
).split(" ")


@dataclass
class FlickrCopy:
    """What ``write_flickr30k_entities`` wrote: ids per split (as listed), the missing id, phrase counts."""

    root: Path
    splits: dict[str, list[str]]
    missing_id: str
    sizes: dict[str, tuple[int, int]]  # id -> (width, height)
    # split -> phrases of the readable images' captions: all, and those with boxes (not notvisual/scene/nobndbox)
    phrases: dict[str, int] = field(default_factory=dict)
    boxed: dict[str, int] = field(default_factory=dict)
    long_captions: int = 0  # captions of 25 words or more
    wordless: dict[str, int] = field(default_factory=dict)  # split -> captions with no word (skipped, counted)
    past_64: dict[str, int] = field(default_factory=dict)  # split -> boxed phrases ending past word 64


def _flickr_sentences(k: int, rng: np.random.Generator) -> tuple[list[str], int, int, int]:
    """Five Sentences lines of image ``k``: (lines, phrases, boxed phrases, boxed phrases ending past word 64).

    Chains: 1 people (two boxes, one shared with chain 2), 2 people/other (box), 3 clothing (box), 4 scene (scene
    flag), 5 other (nobndbox), 0 notvisual.
    """
    n = int(rng.integers(25, 81))
    long_tail = " ".join(FILLER[(k + i) % len(FILLER)] for i in range(n))
    tail_20 = " ".join(FILLER[:20])
    lines = [
        f"[/EN#1{k:02d}/people A man] in [/EN#3{k:02d}/clothing a blue shirt] stands in [/EN#4{k:02d}/scene a park] .",
        f"[/EN#2{k:02d}/people/other A worker] looks at [/EN#1{k:02d}/people the man] .",
        f"[/EN#1{k:02d}/people Someone] holds [/EN#5{k:02d}/other a small thing] near [/EN#0/notvisual nothing] .",
        f"[/EN#1{k:02d}/people A tall man] {long_tail} [/EN#3{k:02d}/clothing his shirt] .",
        f"[/EN#4{k:02d}/scene The park] is green and [/EN#2{k:02d}/people/other a worker] waits {tail_20}",
    ]
    phrases = 3 + 2 + 3 + 2 + 2
    boxed = 2 + 2 + 1 + 2 + 1  # without scene (2), nobndbox (1) and notvisual (1) phrases
    past_64 = int(3 + n + 2 > 64)  # "his shirt" ends at word n + 5 of the fourth caption (25-80 words)
    return lines, phrases, boxed, past_64


def _flickr_xml(k: int, width: int, height: int) -> tuple[str, list[tuple[int, int, int, int]]]:
    """Annotations/<id>.xml as the release writes it; returns it and the 1-based boxes drawn."""
    boxes = {
        f"1{k:02d}": [(5, 5, width // 3, height // 2)],
        f"2{k:02d}": [(width // 2, height // 3, width - 5, height - 5)],
        f"3{k:02d}": [(10, height // 2, width // 3, height - 10)],
    }
    shared = (width // 4, height // 4, width // 2, height // 2)  # one object, two chains: <name> twice
    lines = ["<annotation>", f"\t<filename>{k}.jpg</filename>", "\t<size>"]
    lines += [f"\t\t<width>{width}</width>", f"\t\t<height>{height}</height>", "\t\t<depth>3</depth>", "\t</size>"]

    def obj(names, box=None, scene=0, nobndbox=0):
        out = ["\t<object>", *[f"\t\t<name>{name}</name>" for name in names]]
        if box is None:
            out += [f"\t\t<scene>{scene}</scene>", f"\t\t<nobndbox>{nobndbox}</nobndbox>"]
        else:
            out.append("\t\t<bndbox>")
            out += [f"\t\t\t<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)]
            out.append("\t\t</bndbox>")
        return [*out, "\t</object>"]

    for chain, chain_boxes in boxes.items():
        for box in chain_boxes:
            lines += obj([chain], box)
    lines += obj([f"1{k:02d}", f"2{k:02d}"], shared)
    lines += obj([f"4{k:02d}"], scene=1)
    lines += obj([f"5{k:02d}"], nobndbox=1)
    drawn = [b for bs in boxes.values() for b in bs] + [shared]
    return "\n".join([*lines, "</annotation>", ""]), drawn


def write_flickr30k_entities(root: Path, counts: tuple[int, int, int] = (6, 3, 3), seed: int = 0) -> FlickrCopy:
    """A Flickr30k Entities copy: ``counts`` readable images per split, plus one id listed in test.txt whose image,
    sentences and annotation are all missing. Every image gets one extra wordless Sentences line ("... !!")."""
    rng = np.random.default_rng(seed)
    for folder in ("Sentences", "Annotations", "flickr30k-images"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    shapes = [(500, 333), (375, 500), (500, 375), (333, 500), (500, 281), (400, 500)]
    copy = FlickrCopy(root, {}, missing_id="9999999999", sizes={})
    k = 0
    for split, count in zip(("train", "val", "test"), counts, strict=True):
        ids = []
        copy.phrases[split] = copy.boxed[split] = copy.wordless[split] = 0
        for _ in range(count):
            image_id = str(1000092795 + 1000 * k)
            width, height = shapes[k % len(shapes)]
            lines, phrases, boxed, past_64 = _flickr_sentences(k, rng)
            lines.insert(2, "... !!")  # a caption with no word left after tokenization
            xml, drawn = _flickr_xml(k, width, height)
            image = Image.fromarray(rng.integers(40, 216, (height // 8, width // 8, 3), dtype=np.uint8))
            image = image.resize((width, height), Image.NEAREST)
            draw = ImageDraw.Draw(image)
            for i, (x0, y0, x1, y1) in enumerate(drawn):
                draw.rectangle((x0 - 1, y0 - 1, x1 - 1, y1 - 1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
                if i == 0:
                    draw.ellipse((x0, y0, x1 - 2, y1 - 2), fill=(250, 240, 30))
            image.save(root / "flickr30k-images" / f"{image_id}.jpg", quality=90)
            (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
            (root / "Annotations" / f"{image_id}.xml").write_text(xml)
            copy.sizes[image_id] = (width, height)
            copy.phrases[split] += phrases
            copy.boxed[split] += boxed
            copy.long_captions += 2  # the fourth (25-80 words) and the fifth (28 words)
            copy.past_64[split] = copy.past_64.get(split, 0) + past_64
            copy.wordless[split] += 1
            ids.append(image_id)
            k += 1
        if split == "test":
            ids.insert(1, copy.missing_id)  # listed, but no image, sentences or annotation
        copy.splits[split] = ids
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return copy


# -- MSR-VTT -----------------------------------------------------------------------------------------------------------
@dataclass
class MsrvttCopy:
    root: Path
    splits: dict[str, list[str]]  # split -> video ids (as in the info files, the broken one included)
    broken: str  # the clip that fails mid-decode
    captions_per_video: int
    wordless: dict[str, int] = field(default_factory=dict)


def write_msrvtt(root: Path, counts: tuple[int, int, int] = (3, 1, 2), captions: int = 20, seed: int = 0) -> MsrvttCopy:
    """An MSR-VTT copy: ``train_val_videodatainfo.json``, ``test_videodatainfo.json`` and ``videos/video<N>.mp4``.

    Each clip has ``captions`` captions (one of 40 words, one wordless "... !!"); the first train clip's file fails
    mid-decode (its header is fine).
    """
    rng = np.random.default_rng(seed)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    names = {"train": "train", "val": "validate", "test": "test"}
    splits: dict[str, list[str]] = {}
    videos: dict[str, list[dict]] = {"trainval": [], "test": []}
    sentences: dict[str, list[dict]] = {"trainval": [], "test": []}
    number, sen_id = 0, 0
    broken = ""
    copy = MsrvttCopy(root, splits, "", captions)
    for split, count in zip(("train", "val", "test"), counts, strict=True):
        splits[split] = []
        copy.wordless[split] = 0
        part = "test" if split == "test" else "trainval"
        for _ in range(count):
            vid = f"video{number}"
            number += 7  # the real ids are not contiguous within a split
            splits[split].append(vid)
            videos[part].append(
                {
                    "category": int(rng.integers(0, 20)),
                    "url": f"https://www.youtube.com/watch?v=example{number}",
                    "video_id": vid,
                    "start time": 10.0,
                    "end time": 12.5,
                    "split": names[split],
                    "id": int(vid[5:]),
                }
            )
            for c in range(captions):
                if c == 3:
                    text = " ".join(FILLER[:40])  # 40 words
                elif c == 5:
                    text = "... !!"
                    copy.wordless[split] += 1
                else:
                    text = f"a person shows thing {c % 7} in a short video {vid}"
                sentences[part].append({"caption": text, "video_id": vid, "sen_id": sen_id})
                sen_id += 1
            if split == "train" and not broken:
                broken = vid
                write_half_corrupt_video(root / "videos" / f"{vid}.mp4")
            else:
                write_moving_video(root / "videos" / f"{vid}.mp4", seed=number)
    copy.broken = broken
    for part, name in (("trainval", "train_val_videodatainfo.json"), ("test", "test_videodatainfo.json")):
        info = {"info": {"year": 2016, "version": "1.0"}, "videos": videos[part], "sentences": sentences[part]}
        (root / name).write_text(json.dumps(info))
    return copy

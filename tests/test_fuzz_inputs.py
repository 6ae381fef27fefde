"""Fuzzed media and checkpoints through ``capsal-explain``: every input either works (and does what it should) or
stops with one ``capsal-explain: error: ...`` line and exit code 2, never a traceback.

The corpus is made here, in tmp: truncated and empty files, a PNG claiming 100000x100000 pixels, 16-bit, palette,
CMYK and animated inputs, an audio-only MP4, a one-frame video, a variable-frame-rate MKV, and broken, foreign or
"future" checkpoints. Media go through a real tiny image checkpoint (``image_checkpoint``); checkpoints are given as
``ckpt_path=``. Most run in process (``explain`` inside ``exit_on_user_error``); one subprocess per error class checks
the real command's stderr and exit code.
"""

from __future__ import annotations

import fractions
import io
import logging
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from tiny import compose_app, quiet_trainer

from capsal import __version__
from capsal.cli.explain import explain, read_media
from capsal.datamodules.media import read_image
from capsal.errors import exit_on_user_error

HEIGHT, WIDTH = 48, 64
COLOURS = [(230, 30, 30), (30, 200, 40), (40, 60, 220), (240, 220, 30), (200, 40, 200)]


# -- the corpus ----------------------------------------------------------------------------------------------------
def noise(height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG signature and IHDR (8-bit RGB, CRC right) claiming ``width x height`` pixels, a tiny IDAT, IEND."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b"")


def write_video(path: Path, colours, codec: str, times_ms=None, rate: int = 10) -> bytes:
    """Flat-colour frames (one per colour), ``times_ms`` their timestamps (variable frame rate); returns the bytes."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=1000 if times_ms is not None else rate)
        stream.height, stream.width = HEIGHT, WIDTH
        stream.pix_fmt = "yuv420p"
        if times_ms is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for i, colour in enumerate(colours):
            frame = av.VideoFrame.from_ndarray(np.full((HEIGHT, WIDTH, 3), colour, np.uint8), format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def write_audio_only(path: Path) -> None:
    """An MP4 holding one second of a 440 Hz AAC tone and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(44100) / 44100)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def sixteen_bit() -> np.ndarray:
    """A horizontal 16-bit grey ramp over the whole 0..65535 range."""
    return np.tile(np.linspace(0, 65535, WIDTH).astype(np.uint16), (HEIGHT, 1))


def make_media(root: Path) -> dict[str, Path]:
    """Every media input of the corpus, written under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    jpeg = encoded(Image.fromarray(noise()), "JPEG", quality=90)
    png = encoded(Image.fromarray(noise()), "PNG")
    files: dict[str, bytes | Callable[[Path], object]] = {
        "empty.jpg": b"",
        "empty.png": b"",
        "empty.mp4": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "bitflip.png": png[:60] + bytes(b ^ 0xFF for b in png[60:80]) + png[80:],
        "bomb.png": bomb_png(),
        "sixteen_bit.png": encoded(Image.fromarray(sixteen_bit()), "PNG"),
        "palette.png": encoded(Image.fromarray(noise()).quantize(16), "PNG", transparency=0),
        "cmyk.jpg": encoded(Image.fromarray(noise()).convert("CMYK"), "JPEG"),
        "animated.gif": encoded(
            Image.fromarray(np.full((HEIGHT, WIDTH, 3), COLOURS[0], np.uint8)),
            "GIF",
            save_all=True,
            append_images=[Image.fromarray(np.full((HEIGHT, WIDTH, 3), c, np.uint8)) for c in COLOURS[1:3]],
            duration=100,
            loop=0,
        ),
        "one_pixel.png": encoded(Image.fromarray(noise(1, 1)), "PNG"),
        "video_named.png": lambda p: write_video(p.with_suffix(".mp4"), COLOURS, "mpeg4"),
        "text.mp4": b"not a video at all\n" * 20,
        "audio_only.mp4": write_audio_only,
        "one_frame.mp4": lambda p: write_video(p, COLOURS[:1], "mpeg4"),
        "truncated.mp4": lambda p: write_video(p, COLOURS * 4, "libx264"),
        "truncated.mkv": lambda p: write_video(p, COLOURS * 4, "mpeg4"),
        # 0, 40, 80 ms, then 1.0 s and 3.0 s: by time the clip's centre (1.75 s) shows frame 3, by count frame 2
        "vfr.mkv": lambda p: write_video(p, COLOURS, "ffv1", times_ms=[0, 40, 80, 1000, 3000]),
    }
    paths = {}
    for name, content in files.items():
        path = root / name
        if callable(content):
            made = content(path)
            if name == "video_named.png":
                path.write_bytes(made)
            elif name.startswith("truncated"):
                path.write_bytes(made[: len(made) // 2])
        else:
            path.write_bytes(content)
        paths[name] = path
    return paths


def make_checkpoints(root: Path, real: Path) -> dict[str, Path]:
    """Every checkpoint input of the corpus, each made from the real tiny checkpoint ``real``."""
    root.mkdir(parents=True, exist_ok=True)
    data = real.read_bytes()

    def edited(name: str, change: Callable[[dict], object]) -> Path:
        checkpoint = torch.load(real, map_location="cpu", weights_only=False)
        checkpoint = change(checkpoint) or checkpoint
        torch.save(checkpoint, root / name)
        return root / name

    def future(checkpoint):
        checkpoint["capsal"]["version"] = "99.0.0"

    def future_class(checkpoint):
        future(checkpoint)
        checkpoint["capsal"]["model_class"] = "capsal.models.hyper.HyperCaptioner"

    def future_option(checkpoint):
        future(checkpoint)
        checkpoint["hyper_parameters"]["attention_heads_per_word"] = 3

    def missing_weight(checkpoint):
        checkpoint["state_dict"].pop(next(k for k in checkpoint["state_dict"] if k.startswith("decoder.")))

    (root / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (root / "empty.ckpt").write_bytes(b"")
    torch.save([1, 2, 3], root / "a_list.ckpt")
    paths = {name: root / name for name in ("truncated.ckpt", "empty.ckpt", "a_list.ckpt")}
    paths.update(
        {
            "future.ckpt": edited("future.ckpt", future),
            "future_class.ckpt": edited("future_class.ckpt", future_class),
            "future_option.ckpt": edited("future_option.ckpt", future_option),
            "missing_attribute.ckpt": edited(
                "missing_attribute.ckpt", lambda c: c["capsal"].update(model_class="capsal.models.s2vt.S3VT")
            ),
            "not_a_captioner.ckpt": edited(
                "not_a_captioner.ckpt", lambda c: c["capsal"].update(model_class="collections.OrderedDict")
            ),
            "garbage_metadata.ckpt": edited("garbage_metadata.ckpt", lambda c: c.update(capsal="model_class")),
            "missing_weight.ckpt": edited("missing_weight.ckpt", missing_weight),
            "lightning_other.ckpt": lightning_checkpoint(root / "lightning_other.ckpt"),
        }
    )
    return paths


def lightning_checkpoint(path: Path) -> Path:
    """A real Lightning checkpoint of a module that is not a capsal captioner (Lightning's BoringModel)."""
    from lightning.pytorch.demos.boring_classes import BoringModel

    trainer = quiet_trainer(max_steps=1, default_root_dir=path.parent)
    trainer.fit(BoringModel())
    trainer.save_checkpoint(path)
    return path


# -- running capsal-explain ----------------------------------------------------------------------------------------


def run_in_process(capsys, output_dir: Path, *overrides: str) -> tuple[str, object]:
    """``("works", summary)``, ``("error", the one stderr line)``; a traceback propagates (and fails the test)."""
    capsys.readouterr()
    try:
        with exit_on_user_error("capsal-explain"):
            return "works", explain(compose_app("explain", output_dir, *overrides))
    except SystemExit as stop:
        assert stop.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("capsal-explain: error: ")
        return "error", lines[0]


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "capsal.cli.explain", *args, f"output_dir={tmp_path / 'out'}"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, image_checkpoint) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    return {**make_media(root / "media"), **make_checkpoints(root / "checkpoints", image_checkpoint)}


# -- media ---------------------------------------------------------------------------------------------------------
MEDIA_ERRORS = {
    "empty.jpg": "is empty (0 bytes)",
    "empty.png": "is empty (0 bytes)",
    "empty.mp4": "is empty (0 bytes)",
    "truncated.jpg": "cannot read image",
    "truncated.png": "cannot read image",
    "bitflip.png": "cannot read image",
    "bomb.png": "decompression-bomb guard",
    "video_named.png": "cannot read image",
    "text.mp4": "cannot open video",
    "audio_only.mp4": "has no video stream",
    "truncated.mp4": "cannot open video",
}
MEDIA_WORKING = ["sixteen_bit.png", "palette.png", "cmyk.jpg", "animated.gif", "one_pixel.png", "one_frame.mp4"]
MEDIA_WORKING += ["truncated.mkv", "vfr.mkv"]


@pytest.mark.parametrize("name", list(MEDIA_ERRORS))
def test_unreadable_media_stop_with_one_line_naming_the_file(corpus, image_checkpoint, tmp_path, capsys, name):
    outcome, line = run_in_process(capsys, tmp_path, f"ckpt_path={image_checkpoint}", f"input={corpus[name]}")
    assert outcome == "error"
    assert MEDIA_ERRORS[name] in line and name in line


@pytest.mark.parametrize("name", MEDIA_WORKING)
def test_odd_but_valid_media_are_explained(corpus, image_checkpoint, tmp_path, capsys, name):
    """Each is explained at its own size: one map per word over the picture the model saw. (A one-pixel picture
    shows the 8x8 map bilinearly averaged at its centre, which need not reach 1.)"""
    outcome, summary = run_in_process(capsys, tmp_path, f"ckpt_path={image_checkpoint}", f"input={corpus[name]}")
    assert outcome == "works", summary
    maps = np.load(tmp_path / "saliency.npz")["maps"]
    words = summary["sentence"].split()
    height, width = (1, 1) if name == "one_pixel.png" else (HEIGHT, WIDTH)
    assert summary["kind"] == "image" and maps.shape == (len(words), height, width)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    if name != "one_pixel.png":
        assert maps.max() == pytest.approx(1.0, abs=1e-3)


def test_sixteen_bit_pngs_keep_their_tones(corpus):
    """A 16-bit ramp becomes the 8-bit ramp (value / 257), not a saturated white picture."""
    pixels = read_image(corpus["sixteen_bit.png"])
    expected = np.round(sixteen_bit() / 257).astype(np.int16)
    assert pixels.shape == (1, 3, HEIGHT, WIDTH)
    for channel in pixels[0].numpy():
        assert np.abs(channel.astype(np.int16) - expected).max() <= 1


def test_the_bomb_guard_holds_when_pil_s_own_is_off(corpus, monkeypatch):
    """Some libraries set ``PIL.Image.MAX_IMAGE_PIXELS = None``: capsal still refuses from the header alone."""
    from PIL import Image

    from capsal.datamodules.media import ImageReadError, image_size_of

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    for read in (read_image, image_size_of):
        with pytest.raises(ImageReadError, match="100000x100000 pixels, over the"):
            read(corpus["bomb.png"])


def test_palette_cmyk_and_animated_inputs_are_read_as_their_rgb_pictures(corpus, image_checkpoint):
    """Palette and CMYK pictures are converted to RGB; an animated GIF is read as its first frame."""
    palette = Image.open(corpus["palette.png"]).convert("RGB")
    assert (read_image(corpus["palette.png"])[0].permute(1, 2, 0).numpy() == np.asarray(palette)).all()
    cmyk = read_image(corpus["cmyk.jpg"])
    assert cmyk.shape == (1, 3, HEIGHT, WIDTH) and cmyk.float().std() > 30  # the noise survives the conversion
    gif = read_image(corpus["animated.gif"])
    assert gif.shape == (1, 3, HEIGHT, WIDTH)
    assert np.abs(gif[0, :, HEIGHT // 2, WIDTH // 2].numpy().astype(int) - COLOURS[0]).max() <= 8


def test_videos_are_sampled_by_time_through_an_image_checkpoint(corpus, image_checkpoint):
    """An image model takes one frame: the one on screen at the clip's temporal centre."""
    from capsal.checkpoints import load_captioner

    model = load_captioner(image_checkpoint)

    def colour_of(name: str) -> list[int]:
        frames = read_media(corpus[name], model)
        assert frames.shape == (1, 3, HEIGHT, WIDTH)
        return frames[0, :, HEIGHT // 2, WIDTH // 2].tolist()

    assert np.abs(np.subtract(colour_of("vfr.mkv"), COLOURS[3])).max() <= 12  # by frame count it would be frame 2
    assert np.abs(np.subtract(colour_of("one_frame.mp4"), COLOURS[0])).max() <= 12


# -- checkpoints ---------------------------------------------------------------------------------------------------
CHECKPOINT_ERRORS = {
    "truncated.ckpt": "is not a readable PyTorch checkpoint",
    "empty.ckpt": "is not a readable PyTorch checkpoint",
    "a_list.ckpt": "is not a capsal checkpoint",
    "lightning_other.ckpt": "is not a capsal checkpoint",
    "garbage_metadata.ckpt": "is not a capsal checkpoint",
    "future_class.ckpt": "capsal.models.hyper.HyperCaptioner",
    "future_option.ckpt": "99.0.0",
    "missing_attribute.ckpt": "capsal.models.s2vt.S3VT",
    "not_a_captioner.ckpt": "collections.OrderedDict",
    "missing_weight.ckpt": "decoder.",
}


@pytest.mark.parametrize("name", list(CHECKPOINT_ERRORS))
def test_broken_or_foreign_checkpoints_stop_with_one_line(corpus, tmp_path, capsys, name):
    outcome, line = run_in_process(capsys, tmp_path, f"ckpt_path={corpus[name]}", "sample=val:0")
    assert outcome == "error"
    assert CHECKPOINT_ERRORS[name] in line and name in line
    if name.startswith("future"):
        assert "99.0.0" in line and __version__ in line


def test_a_checkpoint_from_a_future_capsal_loads_with_a_warning(corpus, tmp_path, capsys, caplog):
    """Same classes and weights, newer version string: explained, and a warning names both versions."""
    with caplog.at_level(logging.WARNING, logger="capsal"):
        outcome, summary = run_in_process(capsys, tmp_path, f"ckpt_path={corpus['future.ckpt']}", "sample=val:0")
    assert outcome == "works" and summary["panels"]
    assert "99.0.0" in caplog.text and __version__ in caplog.text


# -- the real command: one subprocess per error class --------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "as_checkpoint", "message"),
    [
        ("bomb.png", False, "decompression-bomb guard"),  # ImageReadError
        ("audio_only.mp4", False, "has no video stream"),  # VideoDecodeError
        ("future_class.ckpt", True, "HyperCaptioner"),  # a checkpoint this capsal cannot load
    ],
)
def test_the_command_prints_one_line_and_exits_2(corpus, image_checkpoint, tmp_path, name, as_checkpoint, message):
    if as_checkpoint:
        args = [f"ckpt_path={corpus[name]}", "sample=val:0"]
    else:
        args = [f"ckpt_path={image_checkpoint}", f"input={corpus[name]}"]
    result = run_cli(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsal-explain: error: ") and message in lines[0], lines

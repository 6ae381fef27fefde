"""Reading media files (``capsal.datamodules.media``): even frame sampling by time, short clips, clear errors."""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from capsal.datamodules.media import ImageReadError, VideoDecodeError, decode_video, read_image, sample_times
from capsal.errors import UserError

STEP, BASE = 12, 10  # frame i is a uniform grey of level BASE + STEP * i


def write_video(path: Path, levels, codec: str = "mpeg4", size=(16, 24), times_ms=None) -> Path:
    """Encode uniform grey frames (one per level); ``times_ms`` gives each frame's timestamp (variable frame rate)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=1000 if times_ms is not None else 10)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        if times_ms is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for i, level in enumerate(levels):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), level, np.uint8), format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_levels(count: int) -> list[int]:
    return [BASE + STEP * i for i in range(count)]


def indices_of(video: torch.Tensor) -> list[int]:
    """The frame index each decoded frame shows, read back from its grey level."""
    return [round((float(frame.float().mean()) - BASE) / STEP) for frame in video]


@pytest.mark.parametrize(("name", "codec"), [("clip.avi", "mpeg4"), ("clip.mp4", "libx264"), ("clip.mkv", "libx264")])
def test_frames_are_sampled_evenly_over_the_clip(tmp_path, name, codec):
    path = write_video(tmp_path / name, frame_levels(20), codec)
    video = decode_video(path, num_frames=5)
    assert video.dtype == torch.uint8 and video.shape == (5, 3, 16, 24)
    assert indices_of(video) == [2, 6, 10, 14, 18]  # centres of 5 equal segments of 20 frames
    assert indices_of(decode_video(path, num_frames=4)) == [2, 7, 12, 17]
    assert indices_of(decode_video(path, num_frames=1)) == [10]


def test_short_clips_repeat_frames_evenly_and_say_so(tmp_path, caplog):
    path = write_video(tmp_path / "short.mp4", frame_levels(3), "libx264")
    with caplog.at_level("INFO", logger="capsal"):
        assert indices_of(decode_video(path, num_frames=6)) == [0, 0, 1, 1, 2, 2]
    assert f"video {path} has 3 frames, fewer than the 6 asked for: frames repeated evenly" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="capsal"):
        assert indices_of(decode_video(path, num_frames=3)) == [0, 1, 2]
    assert "repeated" not in caplog.text


def test_variable_frame_rate_is_sampled_by_time_not_frame_count(tmp_path):
    # ten frames in the first 0.1 s, then one every 0.2 s up to 1.9 s: by time, most samples land in the slow part
    times = [10 * i for i in range(10)] + [100 + 200 * i for i in range(10)]
    path = write_video(tmp_path / "vfr.mp4", frame_levels(20), "libx264", times_ms=times)
    # clip spans 0..2.1 s; targets at 0.2625, 0.7875, 1.3125, 1.8375 s show frames starting at 0.1, 0.7, 1.3, 1.7 s
    assert indices_of(decode_video(path, num_frames=4)) == [10, 13, 16, 18]


def test_sample_times_are_segment_centres():
    assert sample_times([0, 1, 2, 3], 2) == [1.0, 3.0]
    assert sample_times([5], 2) == [5.25, 5.75]


def test_size_resizes_frames(tmp_path):
    path = write_video(tmp_path / "clip.avi", frame_levels(4))
    assert decode_video(path, 2, size=8).shape == (2, 3, 8, 8)
    assert decode_video(path, 2, size=(10, 6)).shape == (2, 3, 10, 6)
    assert indices_of(decode_video(path, 2, size=8)) == [1, 3]


def test_unreadable_videos_raise_one_line_user_errors(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    for path, words in [(empty, "empty"), (garbage, "cannot open"), (tmp_path / "absent.mp4", "does not exist")]:
        with pytest.raises(VideoDecodeError) as caught:
            decode_video(path)
        message = str(caught.value)
        assert isinstance(caught.value, UserError)
        assert words in message and str(path) in message and "\n" not in message
    with pytest.raises(UserError, match="num_frames"):
        decode_video(write_video(tmp_path / "ok.avi", frame_levels(2)), num_frames=0)


def test_read_image_gives_uint8_rgb_and_resizes(tmp_path):
    array = np.zeros((6, 10, 3), np.uint8)
    array[:, :5] = (255, 0, 0)
    array[:, 5:] = (0, 0, 255)
    Image.fromarray(array).save(tmp_path / "im.png")
    Image.fromarray(array[..., 0]).save(tmp_path / "grey.png")  # single channel: converted to RGB
    image = read_image(tmp_path / "im.png")
    assert image.dtype == torch.uint8 and image.shape == (1, 3, 6, 10)
    assert image[0, :, 0, 0].tolist() == [255, 0, 0] and image[0, :, 0, 9].tolist() == [0, 0, 255]
    assert read_image(tmp_path / "grey.png").shape == (1, 3, 6, 10)
    assert read_image(tmp_path / "im.png", size=4).shape == (1, 3, 4, 4)
    assert read_image(tmp_path / "im.png", size=(3, 7)).shape == (1, 3, 3, 7)


def test_unreadable_images_raise_one_line_user_errors(tmp_path):
    (tmp_path / "empty.jpg").touch()
    (tmp_path / "text.jpg").write_text("not an image")
    for name, words in [("empty.jpg", "empty"), ("text.jpg", "cannot read"), ("absent.jpg", "does not exist")]:
        with pytest.raises(ImageReadError) as caught:
            read_image(tmp_path / name)
        assert isinstance(caught.value, UserError)
        assert words in str(caught.value) and name in str(caught.value) and "\n" not in str(caught.value)

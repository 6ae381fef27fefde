"""Feature caches: extraction, resumption after a real kill, refusal of other settings, training from the cache."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from PIL import Image

import capsal
from capsal.cli.extract import extract
from capsal.cli.train import train
from capsal.datamodules.base import collate_samples
from capsal.datamodules.features import (
    CachedFeatures,
    FeatureSample,
    Manifest,
    check_model_backbone,
    extract_split,
    read_manifest,
)
from capsal.datamodules.flickr30k_entities import Flickr30kEntitiesDataModule
from capsal.errors import UserError
from capsal.text import Vocabulary
from capsal.types import Caption, Sample

TINY_CNN = {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4, 8, 8]}
RESNET = {
    "_target_": "capsal.models.backbones.TorchvisionBackbone",
    "name": "resnet50",
    "weights": None,
    "input_size": 64,
}


def write_flickr(root: Path, counts: dict[str, int]) -> Path:
    """A Flickr30k Entities copy with one caption per image: "[/EN#1/people a person] holds [/EN#2/other thing k]"."""
    for folder in ("Sentences", "Annotations", "flickr30k-images"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    k = 0
    for split, count in counts.items():
        ids = []
        for _ in range(count):
            image_id = str(1000 + k)
            level = 40 + 25 * k
            Image.new("RGB", (24 + 2 * k, 20), (level, 255 - level, level // 2)).save(
                root / "flickr30k-images" / f"{image_id}.jpg"
            )
            (root / "Sentences" / f"{image_id}.txt").write_text(
                f"[/EN#1/people A person] holds [/EN#2/other thing {k}] .\n[/EN#1/people Someone] waits .\n"
            )
            (root / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation>\n\t<size>\n\t\t<width>{24 + 2 * k}</width>\n\t\t<height>20</height>\n\t</size>\n"
                "\t<object>\n\t\t<name>1</name>\n\t\t<bndbox>\n\t\t\t<xmin>1</xmin>\n\t\t\t<ymin>1</ymin>\n"
                "\t\t\t<xmax>8</xmax>\n\t\t\t<ymax>8</ymax>\n\t\t</bndbox>\n\t</object>\n</annotation>\n"
            )
            ids.append(image_id)
            k += 1
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture
def flickr(tmp_path) -> Path:
    return write_flickr(tmp_path / "f30k", {"train": 4, "val": 2, "test": 1})


def module(root: Path, **options) -> Flickr30kEntitiesDataModule:
    return Flickr30kEntitiesDataModule(root=str(root), **{"image_size": 32, "batch_size": 2, **options})


def test_extraction_writes_float16_shards_a_manifest_and_the_backbone_grids(flickr, tmp_path):
    dm = module(flickr)
    out = extract_split(dm, "train", TINY_CNN, tmp_path / "cache", shard_size=3, batch_size=2, progress=False)
    assert out == tmp_path / "cache" / "train"
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["num_samples"] == 4 and manifest["grid_shape"] == [1, 4, 4, 8]
    assert [(s["file"], s["start"], s["count"]) for s in manifest["shards"]] == [
        ("shard_00000.npy", 0, 3),
        ("shard_00001.npy", 3, 1),
    ]
    assert manifest["settings"]["backbone"]["_target_"] == TINY_CNN["_target_"]
    assert manifest["settings"]["datamodule"]["image_size"] == 32 and "root" not in manifest["settings"]["datamodule"]
    assert manifest["settings"]["split"] == "train" and manifest["capsal_version"] == capsal.__version__
    assert manifest["dataset_root"] == str(flickr.resolve())
    shard = np.load(out / "shard_00000.npy", mmap_mode="r")
    assert isinstance(shard, np.memmap) and shard.dtype == np.float16 and shard.shape == (3, 1, 4, 4, 8)
    # the cached grids are the seeded backbone's output on the dataset's pixels
    torch.manual_seed(0)
    backbone = instantiate(TINY_CNN).eval()
    sample = dm.get_split("train")[1]
    with torch.no_grad():
        expected = backbone(sample.pixels.float() / 255).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(shard[1].astype(np.float32), expected, rtol=2e-3, atol=2e-3)


def test_killed_extraction_resumes_with_the_missing_shards_only(flickr, tmp_path):
    cache = tmp_path / "cache"
    script = (
        "import sys, time\n"
        "from capsal.datamodules.flickr30k_entities import Flickr30kEntitiesDataModule\n"
        "from capsal.datamodules.features import extract_split\n"
        "dm = Flickr30kEntitiesDataModule(root=sys.argv[1], image_size=32, batch_size=2)\n"
        f"extract_split(dm, 'train', {TINY_CNN!r}, sys.argv[2], shard_size=1, progress=False,\n"
        "              on_shard=lambda i: time.sleep(120) if i == 1 else None)\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen([sys.executable, "-c", script, str(flickr), str(cache)], env=env)
    manifest_path = cache / "train" / "manifest.json"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            if manifest_path.exists() and len(json.loads(manifest_path.read_text())["shards"]) == 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the extraction ended before it could be killed"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    manifest = read_manifest(cache / "train")
    assert not manifest["complete"] and [s["index"] for s in manifest["shards"]] == [0, 1]
    (cache / "train" / "shard_00002.npy.tmp").write_bytes(b"half a shard")  # as if killed while writing
    with pytest.raises(UserError, match=r"incomplete \(2 of 4 shards\).*capsal-extract"):
        module(flickr, features_dir=str(cache)).get_split("train")

    computed: list[int] = []
    extract_split(module(flickr), "train", TINY_CNN, cache, shard_size=1, progress=False, on_shard=computed.append)
    assert computed == [2, 3]
    assert read_manifest(cache / "train")["complete"]
    extract_split(module(flickr), "train", TINY_CNN, tmp_path / "fresh", shard_size=1, progress=False)
    for index in range(4):
        resumed = np.load(cache / "train" / f"shard_{index:05d}.npy")
        fresh = np.load(tmp_path / "fresh" / "train" / f"shard_{index:05d}.npy")
        np.testing.assert_allclose(resumed.astype(np.float32), fresh.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_a_cache_made_with_other_settings_is_refused(flickr, tmp_path):
    cache = tmp_path / "cache"
    extract_split(module(flickr), "val", RESNET, cache, shard_size=1, progress=False)
    manifest = read_manifest(cache / "val")
    backbone = manifest["settings"]["backbone"]
    assert (backbone["name"], backbone["weights"], backbone["input_size"]) == ("resnet50", None, 64)
    assert "crop" not in backbone  # the datamodule's protocol frames the images
    assert manifest["grid_shape"] == [1, 2, 2, 2048]
    with pytest.raises(UserError, match=r"datamodule\.protocol='full' but this run has datamodule\.protocol='center"):
        extract_split(module(flickr, protocol="center_crop"), "val", RESNET, cache, shard_size=1, progress=False)
    with pytest.raises(UserError, match=r"datamodule\.image_size=32 but this run has datamodule\.image_size=48"):
        extract_split(module(flickr, image_size=48), "val", RESNET, cache, shard_size=1, progress=False)
    with pytest.raises(UserError, match=r"shard_size=1 but this run has shard_size=2"):
        extract_split(module(flickr), "val", RESNET, cache, shard_size=2, progress=False)
    computed: list[int] = []
    extract_split(module(flickr), "val", RESNET, cache, shard_size=1, progress=False, on_shard=computed.append)
    assert computed == []  # same settings: nothing to redo
    with pytest.raises(UserError, match=r"datamodule\.image_size=32 but the datamodule has 48"):
        module(flickr, image_size=48, features_dir=str(cache)).get_split("val")


def test_a_cache_recording_the_removed_backbone_crop_still_serves(flickr, tmp_path):
    """Caches made while backbones had ``crop`` record ``"resize"`` (whole images): they resume and train as before;
    any other recorded crop framed the images differently and is refused."""
    cache = tmp_path / "cache"
    extract_split(module(flickr), "val", RESNET, cache, shard_size=1, progress=False)
    path = cache / "val" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["settings"]["backbone"]["crop"] = "resize"
    path.write_text(json.dumps(manifest))
    computed: list[int] = []
    extract_split(module(flickr), "val", RESNET, cache, shard_size=1, progress=False, on_shard=computed.append)
    assert computed == []
    split = CachedFeatures.open(cache, "val", module(flickr).build_split("val"))
    check_model_backbone(split, RESNET, torch.nn.Sequential())
    manifest["settings"]["backbone"]["crop"] = "center"
    path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"made with backbone\.crop='center' but this run has backbone\.crop=None"):
        extract_split(module(flickr), "val", RESNET, cache, shard_size=1, progress=False)


def test_the_manifest_round_trips_through_its_file_format(flickr, tmp_path):
    out = extract_split(module(flickr), "val", TINY_CNN, tmp_path / "cache", shard_size=1, progress=False)
    stored = json.loads((out / "manifest.json").read_text())
    assert Manifest.from_json(stored).to_json() == stored
    assert list(Manifest.from_json(stored).to_json()) == list(stored)  # the keys in the file's order
    older = {k: v for k, v in stored.items() if k not in ("pixel_shape", "dropped")}  # an older cache: fewer keys
    older["shards"] = [{k: v for k, v in s.items() if k not in ("thumbnails", "skipped")} for s in stored["shards"]]
    older["written_by"] = "a later capsal"  # keys this capsal does not know are kept
    manifest = Manifest.from_json(older)
    assert manifest.pixel_shape is None and manifest.shards[0].thumbnails is None and manifest.shards[0].skipped == []
    assert manifest.to_json()["written_by"] == "a later capsal"


def test_training_reads_the_cached_grids(flickr, tmp_path):
    cache = tmp_path / "cache"
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        extract_cfg = compose(
            config_name="extract",
            overrides=[
                f"datamodule.root={flickr}",
                "datamodule.image_size=32",
                "datamodule.num_workers=0",
                f"features_dir={cache}",
                "splits=[train,val]",
                "shard_size=3",
                "progress=false",
                # swap the default inception_v3 for a tiny random CNN: delete the node, add another
                "~backbone",
                "+backbone={_target_:capsal.models.backbones.SmallCNN,channels:[4,8,8]}",
            ],
        )
        train_cfg = compose(
            config_name="train",
            overrides=[
                "logger=csv",
                "datamodule=flickr30k_entities",
                f"datamodule.root={flickr}",
                "datamodule.image_size=32",
                f"datamodule.features_dir={cache}",
                "datamodule.batch_size=2",
                "datamodule.num_workers=0",
                "datamodule.min_vocab_count=1",
                "model.hidden_size=16",
                "model.embed_size=8",
                "~model.backbone",  # the model's backbone is the extraction backbone (it gives the grid size)
                "+model.backbone={_target_:capsal.models.backbones.SmallCNN,channels:[4,8,8]}",
                "model.caption_metrics=[]",
                "trainer.max_epochs=2",
                "trainer.enable_model_summary=false",
                "trainer.enable_progress_bar=false",
                "trainer.num_sanity_val_steps=0",
                "callbacks=none",
            ],
        )
    written = extract(extract_cfg)
    assert set(written) == {"train", "val"} and read_manifest(written["val"])["grid_shape"] == [1, 4, 4, 8]

    for image in (flickr / "flickr30k-images").iterdir():  # training from the cache needs no image
        image.unlink()
    (flickr / "flickr30k-images").rmdir()
    dm = instantiate(train_cfg.datamodule)
    dm.setup("fit")
    split = dm.get_split("train")
    assert isinstance(split, CachedFeatures) and isinstance(split[0], FeatureSample)
    assert split[0].captions[0].text == "A person holds thing 0 ." and split[0].captions[0].phrases[0].boxes
    assert split[0].pixel_shape == (1, 32, 32)  # what the grids were extracted from
    shown = split[0].pixels  # the images are gone: the cache's thumbnail, at the extracted size, not black
    assert shown.shape == (1, 3, 32, 32) and shown.dtype == torch.uint8 and shown.float().mean() > 20
    batch = next(iter(dm.val_dataloader()))
    assert batch.pixels is None and batch.grid.shape == (2, 1, 4, 4, 8) and batch.grid.dtype == torch.float32
    assert batch.sample_ids == ["1004", "1005"]
    assert batch.pixel_shape == (1, 32, 32) and batch.image_size == (32, 32)  # maps are scored at the pixel size

    with open_dict(train_cfg):
        train_cfg.output_dir = str(tmp_path / "run")
    OmegaConf.resolve(train_cfg)
    summary = train(train_cfg)
    assert summary["global_step"] == 4 and np.isfinite(summary["metrics"]["val/loss"])

    # a model whose backbone is not the extraction backbone is refused, naming the setting
    other = train_cfg.copy()
    other.model.backbone.channels = [4, 8, 16]
    with pytest.raises(UserError, match=r"backbone\.channels=\[4, 8, 8\] but the model has model\.backbone\.channels"):
        train(other)
    other.model.backbone = {"_target_": TINY_CNN["_target_"], "channels": [4, 8, 8], "convs_per_stage": 2}
    with pytest.raises(UserError, match=r"backbone\.convs_per_stage=1 but the model has model\.backbone\.convs_per"):
        train(other)
    written_out = {**TINY_CNN, "convs_per_stage": 1, "in_channels": 3}  # the constructor's defaults: no difference
    check_model_backbone(split, written_out, torch.nn.Sequential(instantiate(written_out)))


def test_collated_cached_batches_carry_the_extracted_pixel_shape(tmp_path):
    grids = np.random.default_rng(0).standard_normal((3, 2, 2, 3, 4)).astype(np.float16)
    np.save(tmp_path / "shard_00000.npy", grids)
    ids = ["a", "b", "c"]
    manifest = {
        "settings": {"shard_size": 3},
        "shards": [{"index": 0, "file": "shard_00000.npy", "start": 0, "count": 3, "ids": ids}],
        "num_samples": 3,
        "grid_shape": [2, 2, 3, 4],
        "pixel_shape": [2, 3, 12, 20],  # (T, 3, H, W) of the clips the grids came from
    }
    base = [Sample(torch.zeros(2, 3, 12, 20, dtype=torch.uint8), [Caption(f"clip {i}")], i) for i in ids]
    vocab = Vocabulary.build([f"clip {i}" for i in ids])
    cached = CachedFeatures(tmp_path, manifest, base)
    batch = collate_samples([cached[i] for i in range(3)], vocab)
    assert batch.pixels is None and batch.grid.shape == (3, 2, 2, 3, 4) and batch.sample_ids == ids
    assert torch.equal(batch.grid, torch.from_numpy(grids).float())
    assert batch.pixel_shape == (2, 12, 20) and batch.image_size == (12, 20)
    unknown = CachedFeatures(tmp_path, {**manifest, "pixel_shape": None}, base)  # a cache that did not record it
    assert collate_samples([unknown[0]], vocab).pixel_shape is None


def test_video_grids_keep_the_frame_axis(tmp_path):
    root = tmp_path / "msvd"
    (root / "YouTubeClips").mkdir(parents=True)
    lines = []
    for c in range(3):
        with av.open(str(root / "YouTubeClips" / f"clip{c}.avi"), "w") as container:
            stream = container.add_stream("mpeg4", rate=10)
            stream.height, stream.width, stream.pix_fmt = 16, 16, "yuv420p"
            for t in range(5):
                image = np.full((16, 16, 3), 20 * t + 60 * c, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        lines.append(f"clip{c} a clip number {c}")
    (root / "AllVideoDescriptions.txt").write_text("\n".join(lines) + "\n")
    from capsal.datamodules.msvd import MSVDDataModule

    dm = MSVDDataModule(root=str(root), num_frames=3, frame_size=16)
    out = extract_split(dm, "train", TINY_CNN, tmp_path / "cache", progress=False)
    assert read_manifest(out)["grid_shape"] == [3, 2, 2, 8]
    cached = MSVDDataModule(root=str(root), num_frames=3, frame_size=16, features_dir=str(tmp_path / "cache"))
    sample = cached.get_split("train")[0]
    assert sample.grid.shape == (3, 2, 2, 8) and sample.captions[0].text == "a clip number 0"
    assert not torch.equal(sample.grid[0], sample.grid[2])  # frames differ, so do their grids


def test_capsal_extract_reports_a_missing_root_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "capsal.cli.extract",
            "datamodule=msvd",
            f"datamodule.root={tmp_path / 'absent'}",
            f"features_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TORCH_HOME": str(tmp_path / "torch_home")},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("capsal-extract: error: msvd root ")
    assert "YouTubeClips" in result.stderr and "Traceback" not in result.stderr


# -- backbone weights: the torch hub cache, downloaded when missing --------------------------------------------------
class WeightsServer:
    """An HTTP server on the loopback serving ``files`` (name -> bytes), as a mirror of torchvision's weights would;
    ``requests`` lists the paths asked for."""

    def __init__(self, files: dict[str, bytes]):
        import http.server
        import threading

        served, self.requests = files, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):
                self.requests.append(handler.path)
                data = served.get(handler.path.removeprefix("/mirror/"))
                handler.send_response(200 if data is not None else 404)
                handler.send_header("Content-Length", str(len(data or b"")))
                handler.end_headers()
                handler.wfile.write(data or b"")

            def log_message(handler, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mirror"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once, as on a machine without network."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_extract(tmp_path: Path, env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess:
    """capsal-extract as a user runs it, with ``env`` added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "capsal.cli.extract", *overrides, f"hydra.run.dir={tmp_path / 'run'}", "progress=false"],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **env},
        timeout=240,
    )


def test_extract_offline_stops_in_one_line_with_the_url_and_the_file_to_put(flickr, tmp_path):
    hub = tmp_path / "torch_home"  # empty: nothing cached
    offline = f"http://127.0.0.1:{closed_port()}"
    env = {"TORCH_HOME": str(hub), "CAPSAL_WEIGHTS_MIRROR": offline}
    result = run_extract(tmp_path, env, f"datamodule.root={flickr}", f"features_dir={tmp_path / 'cache'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    expected = hub / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    assert line.startswith("capsal-extract: error: ImageNet weights 'DEFAULT' for inception_v3 could not be download")
    assert f"from {offline}/inception_v3_google-0cc3c7bd.pth (URLError" in line and f"download it to {expected}" in line
    assert "backbone.weights=/path/to.pth" in line and "backbone.weights=null" in line
    assert not expected.exists() and not list(expected.parent.glob("*.partial"))
    assert not (tmp_path / "cache").exists()


def test_extract_downloads_missing_weights_from_a_mirror_into_the_hub_cache_and_extracts(flickr, tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(0)
    classifier = resnet50(weights=None)  # stands in for the ImageNet file (whose hash is in its name: not checked)
    weights = tmp_path / "served.pth"
    torch.save(classifier.state_dict(), weights)
    server = WeightsServer({"resnet50-11ad3fa6.pth": weights.read_bytes()})
    hub = tmp_path / "torch_home"
    env = {"TORCH_HOME": str(hub), "CAPSAL_WEIGHTS_MIRROR": server.url + "/", "CAPSAL_WEIGHTS_CHECK_HASH": "0"}
    try:
        overrides = ["backbone.name=resnet50", "backbone.input_size=64", "datamodule.image_size=32"]
        result = run_extract(
            tmp_path, env, f"datamodule.root={flickr}", f"features_dir={tmp_path / 'cache'}", *overrides
        )
    finally:
        server.close()
    assert result.returncode == 0, result.stderr[-2000:]
    assert server.requests == ["/mirror/resnet50-11ad3fa6.pth"]
    cached = hub / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert cached.read_bytes() == weights.read_bytes()
    manifest = read_manifest(tmp_path / "cache" / "test")
    assert manifest["complete"] and manifest["settings"]["backbone"]["weights"] == "DEFAULT"
    served = extract_split(
        module(flickr), "test", {**RESNET, "weights": str(weights)}, tmp_path / "ref", progress=False
    )
    np.testing.assert_allclose(  # the grids of the downloaded weights, not of random ones
        np.load(tmp_path / "cache" / "test" / "shard_00000.npy"), np.load(served / "shard_00000.npy"), atol=1e-2
    )


def test_a_downloaded_file_whose_hash_differs_from_its_name_is_refused_and_not_kept(tmp_path, monkeypatch):
    from capsal.models.backbones import TorchvisionBackbone

    server = WeightsServer({"resnet50-11ad3fa6.pth": b"not the ImageNet file"})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("CAPSAL_WEIGHTS_MIRROR", server.url)
    try:
        with pytest.raises(
            UserError, match=r"could not be downloaded from http://127\.0\.0\.1:\d+/mirror/resnet50-11ad3fa6"
        ):
            TorchvisionBackbone(name="resnet50", weights="DEFAULT")
    finally:
        server.close()
    assert not list((tmp_path / "hub" / "checkpoints").iterdir())  # no file, no partial download


def test_a_mirror_that_never_answers_is_given_up_after_the_timeout(tmp_path, monkeypatch):
    import socket

    from capsal.models import backbones

    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers, as a firewall drops
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("CAPSAL_WEIGHTS_MIRROR", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setattr(backbones, "CONNECT_TIMEOUT_S", 0.5)
    start = time.perf_counter()
    try:
        with pytest.raises(UserError, match=r"could not be downloaded from .*timed out"):
            backbones.TorchvisionBackbone(name="resnet50", weights="DEFAULT")
    finally:
        silent.close()
    assert time.perf_counter() - start < 30  # not hung (torch hub alone would wait forever)
    assert socket.getdefaulttimeout() is None  # the process's default is back


def test_imagenet_weights_are_read_from_the_torch_hub_cache(tmp_path, monkeypatch):
    from torchvision.models import resnet50

    from capsal.models.backbones import TorchvisionBackbone

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    classifier = resnet50(weights=None)  # stands in for the ImageNet file, placed where torchvision keeps it
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(classifier.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth")
    loaded = TorchvisionBackbone(name="resnet50", weights="DEFAULT")
    torch.testing.assert_close(loaded.body.conv1.weight, classifier.conv1.weight)
    with pytest.raises(UserError, match="unknown weights 'NOPE' for resnet50"):
        TorchvisionBackbone(name="resnet50", weights="NOPE")


# -- pixels of cached samples ----------------------------------------------------------------------------------------
def test_cached_samples_show_the_sources_pixels_else_thumbnails_and_batches_carry_none(flickr, tmp_path, caplog):
    cache = tmp_path / "cache"
    for split in ("train", "val"):
        extract_split(module(flickr), split, TINY_CNN, cache, shard_size=1, progress=False)
    assert (cache / "val" / "thumbs_00000.npy").is_file()
    thumbs = np.load(cache / "val" / "thumbs_00000.npy", mmap_mode="r")
    assert thumbs.dtype == np.uint8 and thumbs.shape == (1, 1, 3, 32, 32)  # 32 px fits in 128: kept as is
    source = module(flickr).sample("val", 1).pixels
    dm = module(flickr, features_dir=str(cache))
    dm.setup("fit")
    assert torch.equal(dm.sample("val", 1).pixels, source)  # sources present: exactly their pixels
    assert torch.equal(dm.get_split("val")[1].pixels, source)  # what the gallery reads
    for image in (flickr / "flickr30k-images").iterdir():
        image.unlink()
    gone = module(flickr, features_dir=str(cache))
    gone.setup("fit")
    shown = gone.sample("val", 1).pixels
    assert shown.shape == source.shape and shown.float().mean() > 20  # never black
    assert (shown.float() - source.float()).abs().mean() < 8  # the thumbnail of the same image
    batch = next(iter(gone.val_dataloader()))
    assert batch.pixels is None and batch.pixel_shape == (1, 32, 32) and batch.grid is not None


def test_thumbnails_keep_the_aspect_with_a_long_side_of_at_most_128_pixels(tmp_path):
    from capsal.datamodules.features import resize_frames, thumbnail_shape

    assert thumbnail_shape((299, 299)) == (128, 128) and thumbnail_shape((240, 320)) == (96, 128)
    assert thumbnail_shape((20, 30)) == (20, 30)
    frames = torch.full((2, 3, 240, 320), 77, dtype=torch.uint8)
    small = resize_frames(frames, thumbnail_shape(frames.shape[-2:]))
    assert small.shape == (2, 3, 96, 128) and small.dtype == torch.uint8 and bool((small == 77).all())


# -- clips failing mid-decode ----------------------------------------------------------------------------------------
def test_a_clip_failing_mid_decode_is_left_out_of_the_cache_and_summed_up_in_one_line(tmp_path, capsys, caplog):
    from datasets_on_disk import write_half_corrupt_video  # tests/ is on sys.path (conftest.py)

    from capsal.datamodules.msvd import MSVDDataModule

    root = tmp_path / "msvd"
    (root / "YouTubeClips").mkdir(parents=True)
    clips = [f"clip{c}" for c in range(6)]  # 3 train, 1 val, 2 test
    for c, clip in enumerate(clips):
        if c == 1:
            write_half_corrupt_video(root / "YouTubeClips" / f"{clip}.mp4")
        else:
            with av.open(str(root / "YouTubeClips" / f"{clip}.avi"), "w") as container:
                stream = container.add_stream("mpeg4", rate=10)
                stream.height, stream.width, stream.pix_fmt = 16, 16, "yuv420p"
                for _ in range(4):
                    image = np.full((16, 16, 3), 40 * c + 20, np.uint8)
                    for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
    (root / "AllVideoDescriptions.txt").write_text("".join(f"{c} a clip called {c}\n" for c in clips))
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        cfg = compose(
            config_name="extract",
            overrides=[
                "datamodule=msvd",
                f"datamodule.root={root}",
                "datamodule.num_frames=2",
                "datamodule.frame_size=16",
                f"features_dir={tmp_path / 'cache'}",
                "splits=[train]",
                "batch_size=2",
                "progress=false",
                "~backbone",
                "+backbone={_target_:capsal.models.backbones.SmallCNN,channels:[4,8,8]}",
            ],
        )
    extract(cfg)
    last = capsys.readouterr().out.strip().splitlines()[-2]  # then the hint to train from the cache
    assert last.startswith("skipped files: 1 (train 1) missing, empty, unreadable or failing to decode")
    assert str(root / "YouTubeClips" / "clip1.mp4") in last
    manifest = read_manifest(tmp_path / "cache" / "train")
    assert manifest["shards"][0]["ids"] == ["clip0", "clip2"]  # nothing took clip1's place
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="capsal"):
        dm = MSVDDataModule(root=str(root), num_frames=2, frame_size=16, features_dir=str(tmp_path / "cache"))
        dm.setup("predict")  # builds only the train split (for the vocabulary)
    assert dm.get_split("train").sample_ids == ["clip0", "clip2"] and len(dm.get_split("train")) == 2
    (line,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert line.startswith("msvd train (train 1): skipped 1 video files") and "clip1.mp4" in line

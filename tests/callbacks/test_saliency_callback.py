"""The saliency callback in real short fits: what W&B (offline), TensorBoard, CSV and the local gallery get."""

from __future__ import annotations

import base64
import csv
import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from PIL import Image
from tiny import TINY_OVERRIDES

from capsal import viz
from capsal.callbacks import SaliencyCallback
from capsal.cli.train import train
from capsal.errors import UserError
from capsal.explorer import MAX_RUN, read_explorer

EPOCHS = 2
SAMPLES = 4  # the callback's default num_samples
KINDS = ("prediction", "reference")
STEPS_PER_EPOCH = 4  # 64 training samples in batches of 16


@pytest.fixture(autouse=True)
def _wandb_data_dir(monkeypatch, tmp_path):
    """W&B stages logged tables as artifacts under WANDB_DATA_DIR (else in the home directory)."""
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / ".wandb-data"))


def manifest(gallery: Path) -> list[dict]:
    return json.loads((gallery / "gallery.json").read_text())["epochs"]


def expected_sizes(records: list[dict], image_hw=(64, 64)) -> dict[str, tuple[int, int]]:
    """(width, height) of every gallery figure: one row per explainer, the input then one cell per word; both
    sentences of a sample share the width of the longer one."""
    sizes = {}
    for record in records:
        by_sample: dict[int, list[dict]] = {}
        for figure in record["figures"]:
            by_sample.setdefault(figure["sample"], []).append(figure)
        for figures in by_sample.values():
            columns = 1 + max(len(f["words"]) for f in figures)
            for f in figures:
                sizes[f["png"]] = viz.mosaic_size(len(f["explainers"]), columns, viz.cell_shape(*image_hw))
    return sizes


@pytest.fixture(scope="module")
def tensorboard_run(compose_train, tmp_path_factory):
    """One tiny two-epoch fit with TensorBoard, a sanity check and the default callbacks (checkpoint + saliency)."""
    out = tmp_path_factory.mktemp("tensorboard_run")
    cfg = compose_train(*TINY_OVERRIDES, "logger=tensorboard", f"trainer.max_epochs={EPOCHS}")
    with open_dict(cfg):
        cfg.output_dir = str(out)
        cfg.trainer.num_sanity_val_steps = 1
    OmegaConf.resolve(cfg)
    return out, train(cfg)


def decoded(values: str, shape) -> np.ndarray:
    """A map of the explorer's data as the page decodes it: base64 uint8 over [0, 1]."""
    return np.frombuffer(base64.b64decode(values), np.uint8).reshape(shape) / 255.0


def check_explorer(data: dict, record: dict, rows: list[dict]) -> None:
    """The epoch's explorer holds each gallery sentence with the figure's words, and each word's map under each
    explainer peaks where the W&B table says the figure's (upsampled to 64x64) map does; same hits, and boxes on the
    reference words of a grounded phrase only."""
    figures = record["figures"]
    assert [s["id"] for s in data["samples"]] == [f"{f['sample_id']} ({f['kind']})" for f in figures]
    assert [s["labels"] for s in data["samples"]] == [f["words"] for f in figures]
    for sample, figure in zip(data["samples"], figures, strict=True):
        assert [e["name"] for e in sample["explainers"]] == figure["explainers"]
        assert sample["captions"] == [f"{figure['kind']}: {figure['sentence']}"]
        reference = figure["kind"] == "reference"
        assert [bool(b) for b in sample["boxes"]] == [reference and w != "and" for w in sample["labels"]]
        for entry in sample["explainers"]:
            ours = [r for r in rows if (r["sample"], r["sentence"], r["explainer"]) ==
                    (figure["sample"], figure["kind"], entry["name"])]  # fmt: skip
            assert [r["word"] for r in ours] == sample["labels"]
            assert sample["hits"][entry["name"]] == [r["hit"] for r in ours]
            n = len(sample["labels"])  # every run of 2 to MAX_RUN words is selectable, its map after the words'
            assert entry["runs"] == [[a, b] for a in range(n) for b in range(a + 2, min(a + MAX_RUN, n) + 1)]
            assert len(entry["spatial"]) == n + len(entry["runs"])
            for row, values in zip(ours, entry["spatial"][:n], strict=True):
                grid = torch.tensor(decoded(values, (1, *entry["grid"])), dtype=torch.float32)
                heat = F.interpolate(grid[None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
                # uint8 quantisation moves each value by at most half a step: the table's point is a maximum
                assert heat[row["max_y"], row["max_x"]] >= heat.max() - 1.01 / 255


def test_wandb_offline_run_logs_gallery_images_table_and_explorer(tiny_train_cfg, tmp_path):
    import wandb

    cfg = tiny_train_cfg("logger=wandb", f"trainer.max_epochs={EPOCHS}")
    try:
        summary = train(cfg)
    finally:
        wandb.finish()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    media = run / "files" / "media"
    records = manifest(tmp_path / "gallery")
    assert [r["step"] for r in records] == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]

    images = sorted((media / "images" / "val" / "saliency").glob("sample_*.png"))
    assert len(images) == EPOCHS * SAMPLES * len(KINDS)
    assert {p.name.split("_")[1] for p in images} == {str(k) for k in range(SAMPLES)}
    assert sorted(Image.open(p).size for p in images) == sorted(expected_sizes(records).values())

    def step_of(path: Path) -> int:
        return int(path.name.split("_")[1])

    tables = sorted((media / "table" / "val" / "saliency").glob("table_*.table.json"), key=step_of)
    assert len(tables) == EPOCHS
    for table, record in zip(tables, records, strict=True):
        content = json.loads(table.read_text())
        columns = content["columns"]
        assert columns[:9] == ["epoch", "step", "sample", "sample_id", "sentence", "word_index", "word", "explainer",
                               "overlay"]  # fmt: skip
        assert {"max_x", "max_y", "hit"} <= set(columns)
        rows = content["data"]
        assert len(rows) == sum(len(f["words"]) * len(f["explainers"]) for f in record["figures"])
        assert {row[columns.index("step")] for row in rows} == {record["step"]}
        hit, kind = columns.index("hit"), columns.index("sentence")
        # a reference word inside a shape phrase ("a big red square") is a hit or a miss, "and" has no ground truth;
        # predictions have none
        assert all(row[hit] is None for row in rows if row[kind] == "prediction")
        reference = [(row[columns.index("word")], row[hit]) for row in rows if row[kind] == "reference"]
        assert all((hit is None) == (word == "and") for word, hit in reference)
        assert all(0 <= row[columns.index("max_x")] < 64 and 0 <= row[columns.index("max_y")] < 64 for row in rows)
    # the table's overlay images travel in its run-table artifact, staged for `wandb sync`
    staged = [p for p in (tmp_path / ".wandb-data").rglob("*") if p.is_file() and p.read_bytes()[:4] == b"\x89PNG"]
    assert len(staged) >= len(rows)
    assert {Image.open(p).size for p in staged} == {viz.cell_shape(64, 64)[::-1]}
    # one explorer per epoch, logged as wandb.Html: the page as written in the gallery, the epoch's sentences in it
    explorers = sorted((media / "html" / "val" / "saliency").glob("explorer_*.html"), key=step_of)
    assert len(explorers) == EPOCHS
    for logged, table, record in zip(explorers, tables, records, strict=True):
        assert logged.read_text() == (tmp_path / "gallery" / record["explorer"]).read_text()
        content = json.loads(table.read_text())
        rows = [dict(zip(content["columns"], row, strict=True)) for row in content["data"]]
        check_explorer(read_explorer(logged), record, rows)
    assert summary["wandb_sync"].startswith("wandb sync")
    assert summary["gallery"] == str(tmp_path / "gallery" / "index.html")
    assert "val/pointing_game/caption_guided" in summary["metrics"]


def test_tensorboard_gets_one_image_per_sample_sentence_and_epoch(tensorboard_run):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    out, summary = tensorboard_run
    records = manifest(out / "gallery")
    sizes = expected_sizes(records)
    (log_dir,) = (out / "tensorboard").glob("version_*")
    events = EventAccumulator(str(log_dir), size_guidance={IMAGES: 0})
    events.Reload()
    tags = {f"val/saliency/sample_{k}/{kind}" for k in range(SAMPLES) for kind in KINDS}
    assert set(events.Tags()["images"]) == tags
    for tag in tags:
        images = events.Images(tag)
        # one per validation epoch, at its global step; none from the sanity check (step 0)
        assert [i.step for i in images] == [r["step"] for r in records] == [4, 8]
        k, kind = re.match(r"val/saliency/sample_(\d+)/(\w+)", tag).groups()
        for image, record in zip(images, records, strict=True):
            assert (image.width, image.height) == sizes[f"epoch_{record['epoch']:03d}/sample_{k}_{kind}.png"]
    # localisation runs every 3rd epoch by default, and at the last one: here only in epoch 1
    for tag in ("val/pointing_game/caption_guided", "val/attention_correctness/caption_guided"):
        (scalar,) = events.Scalars(tag)
        assert records[0]["step"] < scalar.step <= records[1]["step"]
    assert list(records[0]["metrics"]) == [] and len(records[1]["metrics"]) == 2
    assert 0.0 <= summary["metrics"]["val/pointing_game/caption_guided"] <= 1.0


class _GalleryPage(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.headings: list[str] = []
        self.tags: set[str] = set()
        self.text: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag == "a":
            self.links.append(dict(attrs)["href"])
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def test_html_gallery_shows_every_figure_newest_epoch_first(tensorboard_run):
    out, summary = tensorboard_run
    gallery = out / "gallery"
    assert summary["gallery"] == str(gallery / "index.html")
    page = _GalleryPage()
    page.feed((gallery / "index.html").read_text())
    expected = {f"epoch_{e:03d}/sample_{k}_{kind}.png" for e in range(EPOCHS) for k in range(SAMPLES) for kind in KINDS}
    assert sorted(page.images) == sorted(expected)  # each once, relative
    assert all((gallery / src).is_file() for src in page.images)
    assert sorted(p.relative_to(gallery).as_posix() for p in gallery.rglob("*.png")) == sorted(expected)
    assert [h.split(" (")[0] for h in page.headings] == [f"Epoch {e}" for e in reversed(range(EPOCHS))]
    assert not page.tags & {"script", "link", "iframe"}  # readable offline: no external assets
    # one explorer per validation epoch, linked under its heading, holding that epoch's gallery sentences
    assert page.links == [f"epoch_{e:03d}/explorer.html" for e in reversed(range(EPOCHS))]
    assert sorted(p.relative_to(gallery).as_posix() for p in gallery.rglob("*.html")) == sorted(
        ["index.html", *page.links]
    )
    for link in page.links:
        assert len(read_explorer(gallery / link)["samples"]) == SAMPLES * len(KINDS)
    text = " ".join(page.text)
    for record in manifest(gallery):
        for figure in record["figures"]:
            assert figure["sentence"] in text
            assert figure["sample_id"] in text


def test_sanity_check_pass_logs_nothing(compose_train, tmp_path):
    """The only validation here is the sanity check: the callback must neither update metrics nor draw."""
    cfg = compose_train(*TINY_OVERRIDES)
    datamodule = instantiate(cfg.datamodule, _convert_="all")
    datamodule.setup("fit")
    model = instantiate(cfg.model, vocab=datamodule.vocab.to_list())
    saliency = SaliencyCallback(num_samples=2)

    class Spy(L.Callback):
        sanity_batches = 0

        def on_validation_batch_end(self, trainer, *args, **kwargs):
            self.sanity_batches += trainer.sanity_checking

    spy = Spy()
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=1,
        check_val_every_n_epoch=2,
        num_sanity_val_steps=1,
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="csv"),
        callbacks=[saliency, spy],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=datamodule)
    assert spy.sanity_batches == 1
    assert not saliency.evaluator.metrics  # no batch was ever scored
    assert not (tmp_path / "gallery").exists()
    assert not any(key.startswith(("val/pointing", "val/attention")) for key in trainer.callback_metrics)
    for path in (tmp_path / "csv").glob("version_*/metrics.csv"):  # (absent when nothing was logged at all)
        assert "pointing" not in path.read_text() and "attention" not in path.read_text()


def test_gradient_explainer_needs_inference_mode_off(tiny_train_cfg, tmp_path):
    cfg = tiny_train_cfg("callbacks.saliency.explainers=[gradient]")
    with pytest.raises(UserError) as error:
        train(cfg)
    message = str(error.value)
    assert "\n" not in message
    assert "gradient" in message and "trainer.inference_mode=false" in message
    assert not (tmp_path / "checkpoints").exists()  # failed at setup, before any training step


def test_gradient_explainer_runs_with_inference_mode_off(tiny_train_cfg, tmp_path):
    cfg = tiny_train_cfg(
        "callbacks.saliency.explainers=[gradient,caption_guided]",
        "callbacks.saliency.num_samples=1",
        "trainer.inference_mode=false",
        "datamodule.num_train=16",
    )
    summary = train(cfg)
    assert {"val/pointing_game/gradient", "val/pointing_game/caption_guided"} <= set(summary["metrics"])
    (record,) = manifest(tmp_path / "gallery")
    assert [f["explainers"] for f in record["figures"]] == [["gradient", "caption_guided"]] * 2


def test_video_fit_logs_temporal_scalars_and_fig5_images(tiny_train_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    cfg = tiny_train_cfg("datamodule=shapes_video", "logger=tensorboard", "callbacks.saliency.num_samples=2")
    summary = train(cfg)
    for metric in ("temporal_pointing", "spatial_pointing"):
        assert 0.0 <= summary["metrics"][f"val/{metric}/caption_guided"] <= 1.0
    (log_dir,) = (tmp_path / "tensorboard").glob("version_*")
    events = EventAccumulator(str(log_dir), size_guidance={IMAGES: 0})
    events.Reload()
    assert {"val/temporal_pointing/caption_guided", "val/spatial_pointing/caption_guided"} <= set(
        events.Tags()["scalars"]
    )
    figures = {f"val/saliency/sample_{k}/{kind}" for k in range(2) for kind in KINDS}
    assert figures <= set(events.Tags()["images"])
    (record,) = manifest(tmp_path / "gallery")
    for figure in record["figures"]:
        assert figure["strip"] is None  # Fig. 5: the strips are part of the figure
        image = Image.open(tmp_path / "gallery" / figure["png"])
        assert image.mode == "RGB" and image.width == viz.VIDEO_WIDTH
        words = len(figure["words"])
        # title, then the strip (a row per word) and the words' most salient frames, rows of 5
        assert image.height >= viz.FOOTER + words * viz.STRIP_ROW + (words + 4) // 5 * viz.FRAME_CELL
        pixels = list(image.convert("L").getdata())
        assert len(set(pixels)) > 10  # grey levels and frames, not a blank canvas
        assert " ".join(figure["words"]) in figure["sentence"]
    # the epoch's explorer: the clips' 8 frames, each word's temporal curve, its phrase's boxes on their frames
    data = read_explorer(tmp_path / "gallery" / record["explorer"])
    datamodule = instantiate(cfg.datamodule, _convert_="all")
    split, drawn = datamodule.get_split("val"), 0
    for sample, figure in zip(data["samples"], record["figures"], strict=True):
        assert sample["video"] and len(sample["frames"]) == 8 and sample["labels"] == figure["words"]
        for entry in sample["explainers"]:
            curves = np.stack([decoded(values, (8,)) for values in entry["temporal"]])  # the words', then runs'
            assert curves.shape == (len(figure["words"]) + len(entry["runs"]), 8)
            # the page's jump goes to the curve's peak, where the curve drawn has one (ties: their centroid)
            unique = (curves == curves.max(1, keepdims=True)).sum(1) == 1
            assert list(curves.argmax(1)[unique]) == list(np.array(entry["best"])[unique]) and unique.any()
        caption = split[figure["index"]].captions[0]
        for k, boxes in enumerate(sample["frame_boxes"]):
            phrase = next((p for p in caption.phrases if p.start <= k < p.end), None)
            truth = phrase.frame_boxes if figure["kind"] == "reference" and phrase else {}
            assert boxes == [[list(b) for b in truth.get(t, [])] for t in range(8)]
            drawn += sum(map(bool, boxes))
    assert drawn > 0  # the reference phrases' objects are boxed on the frames they are in


PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  const marker = document.createElement("pre");
  marker.id = "capsal-probe";
  marker.textContent = `loaded=${loaded} total=${images.length}`;
  document.body.appendChild(marker);
});
</script>
"""


@pytest.mark.timeout(300)
def test_html_gallery_images_load_in_headless_chromium(chromium, tensorboard_run, tmp_path):
    gallery = tensorboard_run[0] / "gallery"
    probe = gallery / "probe.html"  # the page itself plus a script, beside it so relative paths resolve alike
    probe.write_text((gallery / "index.html").read_text().replace("</body>", PROBE + "</body>"))
    try:
        done = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium-profile'}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        probe.unlink()
    found = re.search(r"loaded=(\d+) total=(\d+)", done.stdout)
    assert found, (done.stdout[-2000:], done.stderr[-2000:])
    loaded, total = map(int, found.groups())
    assert total == EPOCHS * SAMPLES * len(KINDS)
    assert loaded == total


@pytest.mark.timeout(300)
def test_gallery_explorer_shows_each_words_map_offline(browser, tensorboard_run):
    page = tensorboard_run[0] / "gallery" / "epoch_001" / "explorer.html"
    browser.open(page)
    canvases = []
    for word in (1, 2):
        browser.evaluate(f"document.querySelectorAll('.word')[{word}].dispatchEvent(new MouseEvent('mouseenter'))")
        assert browser.evaluate("capsal.state.word") == word
        canvases.append(browser.canvas())
    assert np.abs(canvases[0] - canvases[1]).mean() > 1  # another word, another map over the same image
    browser.evaluate("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowDown'}))")
    assert browser.evaluate("capsal.state.sample") == 1
    assert browser.evaluate("document.querySelectorAll('#rows tbody tr').length") > SAMPLES * len(KINDS)
    assert browser.requests() == [page.as_uri()]
    assert not browser.errors()


def test_faithfulness_steps_log_deletion_and_insertion_to_the_csv_logger(tiny_train_cfg, tmp_path):
    cfg = tiny_train_cfg(
        "callbacks.saliency.faithfulness_steps=4", "callbacks.saliency.num_samples=0", "datamodule.num_train=16"
    )
    summary = train(cfg)
    keys = {f"val/{metric}/caption_guided" for metric in ("deletion", "insertion")}
    assert keys <= set(summary["metrics"])
    (metrics_csv,) = tmp_path.glob("**/metrics.csv")
    rows = [row for row in csv.DictReader(metrics_csv.open()) if row.get("val/deletion/caption_guided")]
    assert rows, "no epoch logged deletion"
    logged = summary["metrics"]["val/deletion/caption_guided"]
    assert float(rows[-1]["val/deletion/caption_guided"]) == pytest.approx(logged)

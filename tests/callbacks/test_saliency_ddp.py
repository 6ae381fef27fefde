"""The saliency callback under DDP: two gloo processes on CPU launched by ``capsal-train`` itself.

Every rank explains its own shard of the validation set (the metric states are reduced across ranks); only global
rank zero draws and writes the gallery. The reference is one process validating the checkpoint the DDP run saved
after its last epoch: a separately trained one-process model would differ (its BatchNorm statistics see other
batches), the checkpoint holds exactly the weights the ranks validated with (DDP broadcasts rank zero's buffers).
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate
from tiny import TINY_OVERRIDES

from capsal.callbacks import SaliencyCallback
from capsal.checkpoints import load_captioner

EPOCHS = 2
SAMPLES = 4
# 29 validation samples: the ranks get 15 and 14 (no sample padded in twice, as DistributedSampler would).
OVERRIDES = [
    *TINY_OVERRIDES,
    "datamodule.num_val=29",
    f"trainer.max_epochs={EPOCHS}",
    "callbacks.saliency.localisation_every_n_epochs=1",
]
METRICS = ("val/pointing_game/caption_guided", "val/attention_correctness/caption_guided")


def logged_localisation(output_dir: Path) -> list[dict[str, float]]:
    (path,) = (output_dir / "csv").glob("version_*/metrics.csv")
    with path.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get(METRICS[0])]
    return [{key: float(row[key]) for key in METRICS} for row in rows]


def one_process_localisation(compose_train, checkpoint: Path) -> dict[str, float]:
    model = load_captioner(checkpoint)
    datamodule = instantiate(compose_train(*OVERRIDES).datamodule, _convert_="all")
    datamodule.vocab = model.vocab
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[SaliencyCallback(num_samples=0)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(model, datamodule=datamodule, verbose=False)
    return {key: float(trainer.callback_metrics[key]) for key in METRICS}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_ranks_share_the_metrics_and_rank_zero_alone_draws(compose_train, tmp_path):
    command = [
        sys.executable,
        "-m",
        "capsal.cli.train",
        *OVERRIDES,
        "trainer=ddp",  # strategy: ddp
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "cpu_threads=auto",
        f"output_dir={tmp_path}",
        f"hydra.run.dir={tmp_path}",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=540)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]

    # cpu_threads=auto shares the idle cores between the two ranks: rank zero measures, the other rank takes its count
    chosen = re.search(r"torch CPU threads: (\d+) \(cpu_threads=auto: (\d+) cores idle at start, 2 process", output)
    assert chosen, output[-4000:]
    threads, idle = int(chosen[1]), int(chosen[2])
    assert threads == max(1, idle // 2)
    assert f"torch CPU threads: {threads} (rank zero's cpu_threads=auto)" in output

    # rank zero drew each epoch's gallery once; the other rank never did
    assert output.count("saliency gallery: epoch") == EPOCHS, output[-4000:]
    gallery = tmp_path / "gallery"
    pngs = sorted(p.relative_to(gallery).as_posix() for p in gallery.rglob("*.png"))
    kinds = ("prediction", "reference")
    assert pngs == sorted(
        f"epoch_{e:03d}/sample_{k}_{kind}.png" for e in range(EPOCHS) for k in range(SAMPLES) for kind in kinds
    )
    assert f"gallery            {gallery / 'index.html'}" in output

    logged = logged_localisation(tmp_path)
    assert len(logged) == EPOCHS
    assert all(0.0 <= v <= 1.0 for values in logged for v in values.values())
    single = one_process_localisation(compose_train, tmp_path / "checkpoints" / "last.ckpt")
    assert logged[-1] == pytest.approx(single, abs=1e-6)

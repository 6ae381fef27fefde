"""Captioning quality and training speed of every model on both synthetic datasets (the README's model table).

    .venv/bin/python benchmarks/bench_models.py [--steps 150] [--models s2vt transformer] [--datasets shapes_image]

Each cell trains the model from its ready experiment (``experiment=<model>_<dataset>``) for a fixed number of
optimizer steps on the demo settings, then scores captions on the validation split (BLEU-4, METEOR, CIDEr).
Time per epoch is the measured seconds per training step times the steps in one epoch.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf, open_dict

from capsal.cli.train import train

MODELS = ("s2vt", "s2vt_meanpool", "soft_attention", "transformer")
DATASETS = ("shapes_image", "shapes_video")


def run_cell(model: str, dataset: str, steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as output_dir:
        overrides = [
            f"experiment={model}_{dataset}",
            "logger=csv",
            "callbacks=none",
            f"trainer.max_steps={steps}",
            "trainer.max_time=null",
            "trainer.max_epochs=1000",
            f"trainer.val_check_interval={steps}",
            "trainer.check_val_every_n_epoch=null",
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "model.caption_metrics=[bleu,meteor,cider]",
            "summary_examples=0",
        ]
        with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
        with open_dict(cfg):
            cfg.output_dir = output_dir
        OmegaConf.resolve(cfg)
        start = time.perf_counter()
        summary = train(cfg)
        seconds = time.perf_counter() - start
    steps_per_epoch = math.ceil(cfg.datamodule.num_train / cfg.datamodule.batch_size)
    metrics = summary["metrics"]
    return {
        "bleu4": metrics.get("val/bleu4", float("nan")),
        "meteor": metrics.get("val/meteor", float("nan")),
        "cider": metrics.get("val/cider", float("nan")),
        "epoch_s": seconds / steps * steps_per_epoch,
        "total_s": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    args = parser.parse_args()
    rows = [(m, d, run_cell(m, d, args.steps)) for d in args.datasets for m in args.models]
    print(f"\n{args.steps} training steps per cell (demo settings, 2-core CPU unless stated)\n")
    print("| model | dataset | BLEU-4 | METEOR | CIDEr | s / epoch | cell wall time (s) |")
    print("|---|---|---|---|---|---|---|")
    for model, dataset, r in rows:
        print(
            f"| {model} | {dataset} | {r['bleu4']:.3f} | {r['meteor']:.3f} | {r['cider']:.3f} | "
            f"{r['epoch_s']:.0f} | {r['total_s']:.0f} |"
        )


if __name__ == "__main__":
    main()

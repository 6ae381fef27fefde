"""How much of validation time the saliency callback takes on the S2VT image demo's configuration.

A demo-size model (``experiment=demo_image_s2vt``: S2VT on shapes_image, 200 validation images) is trained briefly, then
``trainer.validate`` runs alternately without the callback, with the default callback (``conf/callbacks/
saliency.yaml``), with its gallery alone and with its localisation alone, under the demo's logger (W&B offline,
files in a temporary folder). Prints a Markdown snippet for BENCHMARKS.md: the callback's share of one validation
that does everything, and its average share over the demo's epochs (localisation runs every few epochs).

    .venv/bin/python benchmarks/bench_callback.py [--train-steps 125] [--repeats 3] [--logger wandb|csv]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict


def compose_demo(output_dir: Path):
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=demo_image_s2vt"])
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
    OmegaConf.resolve(cfg)
    return cfg


def make_logger(kind: str, output_dir: Path):
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(project="capsal-bench", save_dir=str(output_dir), offline=True)
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(str(output_dir), name="csv")


def validate_seconds(model, datamodule, callbacks, logger) -> float:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.validate(model, datamodule=datamodule, verbose=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=125, help="training steps before timing (1 demo epoch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--logger", choices=["wandb", "csv"], default="wandb", help="the demo logs to W&B offline")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="capsal-bench-"))
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        os.environ.setdefault(name, str(work / name.lower()))
    os.environ.setdefault("WANDB_SILENT", "true")
    cfg = compose_demo(work)
    L.seed_everything(0)
    datamodule = instantiate(cfg.datamodule, _convert_="all")
    datamodule.setup("fit")
    model = instantiate(cfg.model, vocab=datamodule.vocab.to_list())
    start = time.perf_counter()
    L.Trainer(
        accelerator="cpu",
        max_steps=args.train_steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start

    saliency = cfg.callbacks.saliency  # the defaults make demo runs with
    gallery_dir = str(work / "gallery")
    variants = {
        "without the callback": lambda: [],
        "callback, gallery and localisation": lambda: [instantiate(saliency, gallery_dir=gallery_dir)],
        "callback, gallery only": lambda: [instantiate(saliency, gallery_dir=gallery_dir, localisation=False)],
        "callback, localisation only": lambda: [instantiate(saliency, gallery_dir=gallery_dir, num_samples=0)],
    }
    logger = make_logger(args.logger, work)
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        validate_seconds(model, datamodule, [], logger)  # warm-up: Java for METEOR, allocator, caches
        for _ in range(args.repeats):
            for name, callbacks in variants.items():
                times[name].append(validate_seconds(model, datamodule, callbacks(), logger))
    finally:
        if args.logger == "wandb":
            import wandb

            wandb.finish()
    print(markdown(args, cfg, times, train_seconds, len(datamodule.get_split("val"))))


def due_epochs(every: int, epochs: int) -> int:
    """Validation epochs the callback works in during a fit of ``epochs`` epochs (every n-th and the last)."""
    return sum(1 for epoch in range(1, epochs + 1) if epoch % every == 0 or epoch == epochs)


def markdown(args, cfg, times: dict[str, list[float]], train_seconds: float, val_samples: int) -> str:
    median = {name: statistics.median(values) for name, values in times.items()}
    base = median["without the callback"]
    full = median["callback, gallery and localisation"]
    gallery = median["callback, gallery only"] - base
    localisation = median["callback, localisation only"] - base
    saliency, epochs = cfg.callbacks.saliency, int(cfg.trainer.max_epochs)
    every_loc = saliency.localisation_every_n_epochs or saliency.every_n_epochs
    n_gallery, n_loc = due_epochs(saliency.every_n_epochs, epochs), due_epochs(every_loc, epochs)
    per_epoch = (gallery * n_gallery + localisation * n_loc) / epochs
    lines = [
        f"### Saliency callback overhead (demo_image_s2vt, {platform.machine()} CPU, "
        f"{torch.get_num_threads()} threads)",
        "",
        f"`.venv/bin/python benchmarks/bench_callback.py --train-steps {args.train_steps} --repeats {args.repeats} "
        f"--logger {args.logger}`: S2VT trained {args.train_steps} steps ({train_seconds:.0f} s), then "
        f"`trainer.validate` on the {val_samples} validation images (captioning metrics included) with the "
        f"default callback ({saliency.num_samples} gallery samples x 2 sentences, "
        f"{', '.join(saliency.explainers or ['caption_guided'])}); median of {args.repeats}.",
        "",
        "| validation | median s | runs (s) |",
        "|---|---|---|",
        *[f"| {n} | {median[n]:.2f} | {', '.join(f'{v:.2f}' for v in vs)} |" for n, vs in times.items()],
        "",
        f"- a validation epoch with gallery and localisation: callback share **{(full - base) / full:.0%}** "
        f"({full - base:.2f} s of {full:.2f} s; gallery {gallery:.2f} s, localisation {localisation:.2f} s)",
        f"- gallery alone (every epoch by default): share **{gallery / (base + gallery):.0%}**",
        f"- over the demo's {epochs} epochs (gallery every {saliency.every_n_epochs}, localisation every {every_loc} "
        f"and at the last: {n_gallery} and {n_loc} epochs): {per_epoch:.2f} s per validation, share "
        f"**{per_epoch / (base + per_epoch):.0%}** (target <= 25%)",
    ]
    return "\n".join(["", *lines])


if __name__ == "__main__":
    main()

"""What each built-in explainer costs per caption, as a multiple of ``caption_guided`` on the same model, caption and
process.

    .venv/bin/python benchmarks/bench_explainer_costs.py [--model demo transformer vit_gpt2] [--repeats R]

``demo``: the image demo's soft-attention model (hidden 256, an 18-word vocabulary) over one 8x8 grid (m = 64 items);
``transformer``: capsal's Transformer at the same size (2 encoder and 2 decoder layers, hidden 256), the model with
attention maps for ``rollout`` and ``relevancy``; ``vit_gpt2``: the ViT-Base + GPT-2 captioner of ``bench_hf.py``
(m = 196 patches, ``keep=input``). Random weights: the cost depends on the shapes, not on what the model learned.
One image and the 9-word caption "a big green circle and a small red square" (the HF model: its 8 first words).
Every explainer runs with its default options (``conf/explainer_options/<name>.yaml``); those the model cannot run
(a one-line refusal) are listed as such. Median of ``repeats`` after one warm-up (``--no-warm-up``: none).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from capsal.errors import UserError
from capsal.explainers import available_explainers, build_explainer
from capsal.models.soft_attention import SoftAttention
from capsal.models.transformer import TransformerCaptioner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_explain import timed

CPU = torch.device("cpu")
DEMO_WORDS = "a big small red green blue yellow circle square triangle diamond and moves left right up down then"
CAPTION = "a big green circle and a small red square"


def build(name: str, folder: Path) -> tuple[torch.nn.Module, torch.Tensor, str]:
    """The model, the items of one image and the caption."""
    torch.manual_seed(0)
    sizes = {"hidden_size": 256, "embed_size": 64, "caption_metrics": []}
    if name == "demo":
        model = SoftAttention(DEMO_WORDS.split(), **sizes).eval()
    elif name == "transformer":
        model = TransformerCaptioner(DEMO_WORDS.split(), num_heads=4, **sizes).eval()
    else:
        from bench_hf import build as build_hf

        model = build_hf(folder, "input", CPU)
        with torch.no_grad():
            items = model.items(model.features(torch.rand(1, 1, 3, 224, 224)))
        return model, items, " ".join(CAPTION.split()[:8])
    return model, torch.randn(1, 64, model.feature_size), CAPTION


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["demo", "transformer", "vit_gpt2"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--explainers", nargs="+", default=None, help="default: every built-in")
    parser.add_argument("--warm-up", action=argparse.BooleanOptionalAction, default=True, help="one untimed run first")
    args = parser.parse_args()
    names = args.explainers or [n for n in available_explainers() if n != "caption_guided"]
    print(f"torch threads {torch.get_num_threads()}, median of {args.repeats}\n")
    print("| model | explainer | s per caption | x caption_guided |")
    print("|---|---|---|---|")
    for model_name in args.model:
        with tempfile.TemporaryDirectory() as folder:
            model, items, caption = build(model_name, Path(folder))
            reference = seconds_per_caption("caption_guided", model, items, caption, args)
            print(f"| {model_name} | caption_guided | {reference:.3f} | 1.00 |", flush=True)
            for name in names:
                try:
                    seconds = seconds_per_caption(name, model, items, caption, args)
                except UserError as error:
                    print(f"| {model_name} | {name} | refused: {str(error)[:60]}... | |", flush=True)
                    continue
                print(f"| {model_name} | {name} | {seconds:.3f} | {seconds / reference:.2f} |", flush=True)


def seconds_per_caption(name: str, model: torch.nn.Module, items: torch.Tensor, caption: str, args) -> float:
    explainer = build_explainer(name)
    return timed(lambda: explainer.explain(model, items, tokens=caption), CPU, args.repeats, args.warm_up)


if __name__ == "__main__":
    main()

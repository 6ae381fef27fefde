"""Speed of the batched caption-guided explainer on a ViT-GPT2-sized Hugging Face captioner, in both ``keep`` modes,
against its floor and the naive loop (the style of ``bench_explain.py``).

    .venv/bin/python benchmarks/bench_hf.py [--keep input encoder_output] [--words 8] [--naive-items 8]
        [--repeats 3] [--device cpu]

The model: ``VisionEncoderDecoderModel`` with a 12-layer ViT-Base encoder (224 x 224 pixels in 16 x 16 patches: 196
patch tokens + the class token = 197 tokens, width 768) and a 12-layer GPT-2 decoder (width 768, 50,257-word output,
cross-attention), random weights from their configs (timing does not depend on what a model learned; nothing is
downloaded). The sentence's words come from a small byte-level BPE tokenizer written here (``tests/tiny.py``).

Per ``keep`` mode: the explainer's median time for one image and one sentence (m = 196 single-item inputs); the
floor (one teacher-forced pass of the same 196 single-item inputs, target log-probabilities only, unchunked); the
naive loop (one call per item and word, the definition: with ``--naive-items K`` only K items are timed and the
time is scaled to all, marked "extrapolated"). ``features`` (the patch embeddings, or for ``keep=encoder_output`` the
encoder's pass over the whole image) is timed apart and not part of either.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from bench_explain import naive_run, timed

from capsal.explainers import build_explainer
from capsal.models.hf import HFCaptioner
from capsal.models.protocol import target_logprobs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
SENTENCE = "a big yellow triangle and a small blue diamond and a red circle and a green square"


def build(folder: Path, keep: str, device: torch.device) -> HFCaptioner:
    """ViT-Base + GPT-2 (random weights) saved as configs, a tokenizer and an image processor, loaded by path."""
    import transformers as tf
    from tiny import _bpe_files

    decoder = tf.GPT2Config(add_cross_attention=True, bos_token_id=0, eos_token_id=0)
    config = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(tf.ViTConfig(), decoder)
    config.decoder_start_token_id = config.eos_token_id = config.pad_token_id = 0
    config.save_pretrained(folder)
    vocab, merges = _bpe_files(folder)
    tf.GPT2Tokenizer(vocab=str(vocab), merges=str(merges)).save_pretrained(folder)
    tf.ViTImageProcessor().save_pretrained(folder)
    return HFCaptioner(str(folder), keep=keep, from_config=True, caption_metrics=[]).to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", nargs="+", default=["input", "encoder_output"])
    parser.add_argument("--words", type=int, default=8, help="words of the sentence (the first of SENTENCE)")
    parser.add_argument("--budget-mb", type=float, default=1024.0, help="the explainer's memory_budget_mb")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-items", type=int, default=8, help="time the naive loop on K items, extrapolate")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device {device}, torch threads {torch.get_num_threads()}, median of {args.repeats}\n")
    print("| keep | words (tokens) | features s | explainer s | floor s | explainer/floor | naive/explainer | chunk |")
    print("|---|---|---|---|---|---|---|---|")
    for keep in args.keep:
        print(bench_mode(keep, args, device))


def bench_mode(keep: str, args: argparse.Namespace, device: torch.device) -> str:
    """One table row: ``keep`` mode's features, explainer, floor and naive times."""
    with tempfile.TemporaryDirectory() as folder:
        model = build(Path(folder), keep, device)
    pixels = torch.rand(1, 1, 3, 224, 224, device=device)
    with torch.no_grad():
        t_features = timed(lambda: model.features(pixels), device, args.repeats)
        items = model.items(model.features(pixels))
    m = items.shape[1]
    sentence = " ".join(SENTENCE.split()[: args.words])
    tokens = torch.tensor([model.vocab.encode(sentence)], device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    singles = items.transpose(0, 1)  # (m, 1, d): every item alone
    positions = torch.arange(m, device=device)[:, None]
    explainer = build_explainer("caption_guided", memory_budget_mb=args.budget_mb)

    @torch.no_grad()
    def explainer_run():
        return explainer.explain(model, items, tokens=tokens)

    @torch.no_grad()
    def floor_run():  # one teacher-forced pass of the same m single-item inputs
        state = model.encode(singles, None, positions)
        return target_logprobs(model, state, inputs.expand(m, -1), targets.expand(m, -1))

    t_explainer = timed(explainer_run, device, args.repeats)
    t_floor = timed(floor_run, device, args.repeats)
    k = min(args.naive_items, m)
    t_naive = timed(naive_run(model, singles[:k], inputs), device, 1, warm_up=False) * m / k
    naive = f"{t_naive / t_explainer:.1f}" + (f" (extrapolated from {k} items)" if k < m else "")
    return (
        f"| {keep} | {args.words} ({inputs.shape[1]}) | {t_features:.3f} | {t_explainer:.2f} | {t_floor:.2f} | "
        f"{t_explainer / t_floor:.2f} | {naive} | {explainer.last_chunking['chunk']} |"
    )


if __name__ == "__main__":
    main()

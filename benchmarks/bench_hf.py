"""Speed of the batched caption-guided explainer on a ViT-GPT2-sized (or SmolVLM-256M-sized) Hugging Face captioner,
in both ``keep`` modes, against its floor and the naive loop (the style of ``bench_explain.py``).

    .venv/bin/python benchmarks/bench_hf.py [--model vit_gpt2|smolvlm] [--keep input encoder_output] [--words 8]
        [--naive-items 8] [--repeats 3] [--budget-mb 1024] [--peak] [--device cpu]

The model: ``VisionEncoderDecoderModel`` with a 12-layer ViT-Base encoder (224 x 224 pixels in 16 x 16 patches: 196
patch tokens + the class token = 197 tokens, width 768) and a 12-layer GPT-2 decoder (width 768, 50,257-word output,
cross-attention), random weights from their configs (timing does not depend on what a model learned; nothing is
downloaded). The sentence's words come from a small byte-level BPE tokenizer written here (``tests/tiny.py``).

``--model smolvlm``: ``SmolVLMForConditionalGeneration`` sized as HuggingFaceTB/SmolVLM-256M-Instruct: a SigLIP-base
tower (12 layers, width 768, 12 heads, MLP 3072; 512 x 512 pixels in 16 x 16 patches: a 32 x 32 patch grid), pixel
shuffle by 4 (64 image tokens), and a SmolLM2-135M-sized Llama (30 layers, width 576, 9 heads, 3 key/value heads,
MLP 1536, 49,280-word output), random weights from the configs. Idefics3's processor (SmolVLM's own needs
num2words) with image splitting off: one 512 x 512 grid of 8 x 8 image tokens, m = 64 items (each a group of 4 x 4
patches), the prefix its image tokens with their markers (no chat template). Its ``keep`` modes are ``input`` and
``prefix`` (the default ``--keep`` for it); the naive loop calls the model once per item and word of the sentence
(the prefix is part of every call).

Per ``keep`` mode: the explainer's median time for one image and one sentence (m = 196 single-item inputs); the
floor (one teacher-forced pass of the same 196 single-item inputs, target log-probabilities only, unchunked); the
naive loop (one call per item and word, the definition: with ``--naive-items K`` only K items are timed and the
time is scaled to all, marked "extrapolated"). ``features`` (the patch embeddings, or for ``keep=encoder_output`` the
encoder's pass over the whole image) is timed apart and not part of either. ``--peak``: the peak memory of a fresh
explainer's call under ``--budget-mb``, measured as ``bench_explain.py`` does (CUDA: ``max_memory_allocated``; CPU:
the growth of a new process's peak resident size, :func:`bench_explain.peak_growth`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from bench_explain import measured_peak, naive_run, peak_growth, script_peak, timed

from capsal.explainers import build_explainer
from capsal.models.hf import HFCaptioner
from capsal.models.protocol import target_logprobs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
SENTENCE = "a big yellow triangle and a small blue diamond and a red circle and a green square"


def build(folder: Path, keep: str, device: torch.device, name: str = "vit_gpt2") -> HFCaptioner:
    """ViT-Base + GPT-2 (random weights) saved as configs, a tokenizer and an image processor, loaded by path
    (``name="smolvlm"``: :func:`write_smolvlm`)."""
    import transformers as tf
    from tiny import _bpe_files

    if name == "smolvlm":
        write_smolvlm(folder)
        return HFCaptioner(str(folder), keep=keep, from_config=True, caption_metrics=[]).to(device).eval()
    decoder = tf.GPT2Config(add_cross_attention=True, bos_token_id=0, eos_token_id=0)
    config = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(tf.ViTConfig(), decoder)
    config.decoder_start_token_id = config.eos_token_id = config.pad_token_id = 0
    config.save_pretrained(folder)
    vocab, merges = _bpe_files(folder)
    tf.GPT2Tokenizer(vocab=str(vocab), merges=str(merges)).save_pretrained(folder)
    tf.ViTImageProcessor().save_pretrained(folder)
    return HFCaptioner(str(folder), keep=keep, from_config=True, caption_metrics=[]).to(device).eval()


def write_smolvlm(folder: Path) -> None:
    """SmolVLM-256M-Instruct's sizes (the module doc) as a config, a tokenizer and Idefics3's processor, no weights."""
    from tiny import idefics3_parts

    vision = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
    vision.update(image_size=512, patch_size=16)
    text = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9}
    text.update(num_key_value_heads=3, head_dim=64, vocab_size=49280, max_position_embeddings=8192, rope_theta=1e5)
    config, tokenizer, processor = idefics3_parts(folder, text, vision, kind="SmolVLM", scale=4)
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)


SIZES = {"vit_gpt2": 224, "smolvlm": 512}  # the image's pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=tuple(SIZES), default="vit_gpt2")
    parser.add_argument("--keep", nargs="+", default=None, help="default: input encoder_output (smolvlm: input prefix)")
    parser.add_argument("--words", type=int, default=8, help="words of the sentence (the first of SENTENCE)")
    parser.add_argument("--budget-mb", type=float, default=1024.0, help="the explainer's memory_budget_mb")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-items", type=int, default=8, help="time the naive loop on K items, extrapolate")
    parser.add_argument("--peak", action="store_true", help="add the explainer's peak memory under --budget-mb")
    parser.add_argument("--peak-of", default=None, help=argparse.SUPPRESS)  # the peak's subprocess: its keep mode
    args = parser.parse_args()
    keeps = args.keep or (["input", "prefix"] if args.model == "smolvlm" else ["input", "encoder_output"])
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.peak_of is not None:
        return print(peak_growth(*explain_calls(*setup(args.peak_of, args, device), args)))
    print(f"device {device}, torch threads {torch.get_num_threads()}, median of {args.repeats}\n")
    peak = " peak MB (budget) |" if args.peak else ""
    print(
        "| keep | words (tokens) | features s | explainer s | floor s | explainer/floor | naive/explainer | chunk |"
        + peak
    )
    print("|---|---|---|---|---|---|---|---|" + "---|" * args.peak)
    for keep in keeps:
        print(bench_mode(keep, args, device))


def setup(keep: str, args: argparse.Namespace, device: torch.device):
    """The model for ``keep``, one random image's items and the sentence's tokens."""
    with tempfile.TemporaryDirectory() as folder:
        model = build(Path(folder), keep, device, args.model)
    pixels = torch.rand(1, 1, 3, SIZES[args.model], SIZES[args.model], device=device)
    sentence = " ".join(SENTENCE.split()[: args.words])
    tokens = torch.tensor([model.vocab.encode(sentence)], device=device)
    return model, pixels, tokens


def explain_calls(model: HFCaptioner, pixels: torch.Tensor, tokens: torch.Tensor, args: argparse.Namespace):
    """A fresh explainer's call on a two-item input (the runtime's warm-up) and on the image's items."""
    with torch.no_grad():
        items = model.items(model.features(pixels))

    def fresh(some: torch.Tensor):
        return lambda: build_explainer("caption_guided", memory_budget_mb=args.budget_mb).explain(
            model, some, tokens=tokens
        )

    return fresh(items[:, :2]), fresh(items)


def bench_mode(keep: str, args: argparse.Namespace, device: torch.device) -> str:
    """One table row: ``keep`` mode's features, explainer, floor and naive times (and the peak memory)."""
    model, pixels, tokens = setup(keep, args, device)
    with torch.no_grad():
        t_features = timed(lambda: model.features(pixels), device, args.repeats)
        items = model.items(model.features(pixels))
    m = items.shape[1]
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
    start = max(len(model.vocab.prefix) - 1, 0)  # the first input whose next token is a word
    t_naive = timed(naive_run(model, singles[:k], inputs, start), device, 1, warm_up=False) * m / k
    naive = f"{t_naive / t_explainer:.1f}" + (f" (extrapolated from {k} items)" if k < m else "")
    peak = ""
    if args.peak:
        if device.type == "cuda":
            _, fresh_run = explain_calls(model, pixels, tokens, args)
            measured = measured_peak(torch.no_grad()(fresh_run), device)
        else:
            measured = script_peak(__file__, [*sys.argv[1:], "--peak-of", keep])
        peak = f" {measured / 2**20:.0f} ({args.budget_mb:g}) |"
    return (
        f"| {keep} | {args.words} ({inputs.shape[1]}) | {t_features:.3f} | {t_explainer:.2f} | {t_floor:.2f} | "
        f"{t_explainer / t_floor:.2f} | {naive} | {explainer.last_chunking['chunk']} |{peak}"
    )


if __name__ == "__main__":
    main()

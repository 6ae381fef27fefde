"""Tiny but real training settings shared by the fixtures in ``conftest.py`` and the tests that compose their own
configs: small synthetic splits, a narrow model, one short epoch, CSV logs, no slow captioning metrics."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir, initialize_config_module
from omegaconf import DictConfig, OmegaConf, open_dict

TINY_OVERRIDES = [
    "logger=csv",
    "datamodule.num_train=64",
    "datamodule.num_val=16",
    "datamodule.num_test=16",
    "datamodule.batch_size=16",
    "model.hidden_size=32",
    "model.embed_size=16",
    "model.backbone.channels=[8,16,16]",
    "model.caption_metrics=[]",
    "trainer.max_epochs=1",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "trainer.num_sanity_val_steps=0",
    "summary_examples=2",
]
TINY_VIDEO_OVERRIDES = ["datamodule.num_frames=8", "datamodule.frame_size=32", "datamodule.min_event_frames=3"]


# the words and sizes of the tiny random captioners most explainer tests build (``SoftAttention(WORDS, **TINY)``)
WORDS = ["a", "red", "blue", "circle", "square", "and"]
TINY = {
    "hidden_size": 12,
    "embed_size": 6,
    "dropout": 0.0,
    "caption_metrics": [],
    "backbone": {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4, 5]},
}


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` inside the context: a trained fixture gets the same weights whatever
    thread count the runner has (``make test`` gives each worker one), and tiny passes skip the threading cost."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def quiet_trainer(**options):
    """A CPU Lightning ``Trainer`` for tests that fit a module directly: no logger, checkpoints, progress bar or model
    summary; ``options`` add to or override these."""
    import lightning as L

    quiet = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    return L.Trainer(**{**quiet, **options})


def one_object_shapes(num_test: int = 48):
    """Shapes images with one object each, the data the localising fixtures train on (conftest.py); ``num_test``
    test images (the same generator: more of them, for measurements that need more phrases)."""
    from capsal.datamodules import ShapesImageDataModule

    return ShapesImageDataModule(
        num_train=2000, num_val=48, num_test=num_test, min_objects=1, max_objects=1, captions_per_image=1, batch_size=32
    )


def compose_train(*overrides: str) -> DictConfig:
    """The train config with ``overrides``, as ``capsal-train`` would build it."""
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def tiny_cfg(output_dir: Path, *overrides: str) -> DictConfig:
    """The tiny train config writing into ``output_dir``, resolved; ``datamodule=shapes_video`` brings the tiny
    video settings along."""
    extra = TINY_VIDEO_OVERRIDES if "datamodule=shapes_video" in overrides else []
    cfg = compose_train(*TINY_OVERRIDES, *extra, *overrides)
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
    OmegaConf.resolve(cfg)
    return cfg


def train_tiny(output_dir: Path, *overrides: str) -> Path:
    """Train the tiny config into ``output_dir``; returns the last checkpoint."""
    from capsal.cli.train import train

    summary = train(tiny_cfg(output_dir, *overrides))
    return Path(summary["last_checkpoint"])


def compose_app(name: str, output_dir: Path, *overrides: str, conf: Path | None = None) -> DictConfig:
    """The config ``capsal-<name>`` (``train``, ``eval``, ``explain``, ``extract``) composes with ``overrides``,
    writing into ``output_dir``, without progress bars; from the config folder ``conf`` when given, else capsal's."""
    context = (
        initialize_config_dir(config_dir=str(conf), version_base="1.3")
        if conf is not None
        else initialize_config_module(config_module="capsal.conf", version_base="1.3")
    )
    with context:
        cfg = compose(config_name=name, overrides=list(overrides))
    with open_dict(cfg):
        if "output_dir" in cfg:  # capsal-extract writes only into features_dir
            cfg.output_dir = str(output_dir)
        if "progress" in cfg:
            cfg.progress = False
    return cfg


# ---- tiny Hugging Face captioners (capsal.models.hf), built from configs and vocabulary files, never downloaded ----
# words of the synthetic captions (and BLIP's prompt); these are split into several subword tokens
HF_WORDS = ("a", "big", "small", "and", "red", "green", "blue", "yellow", "circle", "square", "picture", "of")
HF_SPLIT = {"triangle": ("tri", "angle"), "diamond": ("dia", "mond"), "yellow": ("yel", "low")}
HF_FAMILIES = ("vit_gpt2", "deit_bert", "blip", "git", "blip2")
# each family's ``keep`` modes: GIT's image tokens are a prefix of its language model, the others cross-attend
# (BLIP-2: its Q-Former to the tower)
HF_KEEP = {"git": ("input", "prefix")}
HF_ATTENDING = ("vit_gpt2", "deit_bert", "blip")  # with cross-attention maps capsal reads
HF_CASES = [(family, keep) for family in HF_FAMILIES for keep in HF_KEEP.get(family, ("input", "encoder_output"))]


def _bpe_files(folder: Path) -> tuple[Path, Path]:
    """GPT-2 byte-level BPE files: letters, the space mark ``Ġ``, and merges that build each word after a space
    (``Ġcircle``) whole, or in the pieces of ``HF_SPLIT``; a word without a space before it falls into letters."""
    import json

    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = {token: i for i, token in enumerate(["<|endoftext|>", "Ġ", *letters])}
    merges: list[str] = []

    def build(piece: str) -> None:
        for end in range(2, len(piece) + 1):
            left, right = piece[: end - 1], piece[end - 1]
            if piece[:end] not in vocab:
                merges.append(f"{left} {right}")
                vocab[piece[:end]] = len(vocab)

    for word in sorted({*HF_WORDS, *HF_SPLIT}):
        pieces = HF_SPLIT.get(word, (word,))
        build("Ġ" + pieces[0])
        for piece in pieces[1:]:
            build(piece)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def _wordpiece_file(folder: Path) -> Path:
    """A BERT WordPiece vocabulary: the specials (with BLIP's ``[DEC]``), whole words and ``HF_SPLIT``'s pieces."""
    pieces = [p if k == 0 else "##" + p for split in HF_SPLIT.values() for k, p in enumerate(split)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *[w for w in HF_WORDS if w not in HF_SPLIT]]
    path = folder / "vocab.txt"
    path.write_text("\n".join([*tokens, *pieces]) + "\n")
    return path


def save_tiny_hf(
    folder: Path, family: str = "vit_gpt2", seed: int = 0, image_size: int = 32, width: int = 32, positions: int = 64
) -> Path:
    """A tiny random captioner of ``family`` (``HF_FAMILIES``, or ``swin_gpt2``) saved with ``save_pretrained``
    (model, tokenizer, image processor) into ``folder``: ``image_size`` pixels square, 8 x 8 patches (a 4 x 4 grid at
    32), ``width`` wide, two layers, sentences of up to ``positions`` tokens. The GPT-2 ones pad with eos, as
    ``nlpconnect/vit-gpt2-image-captioning`` does."""
    import torch
    import transformers as tf

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    layers = {"hidden_size": width, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 2 * width}
    vision = {**layers, "image_size": image_size, "patch_size": 8}
    size = {"height": image_size, "width": image_size}
    processor = tf.ViTImageProcessor(size=size)
    if family == "git":  # CLIP's tower and processor (shortest edge, centre crop), as microsoft/git-base
        tokenizer = tf.BertTokenizer(vocab=str(_wordpiece_file(folder)), do_lower_case=True)
        ids = tokenizer.convert_tokens_to_ids
        text = {**layers, "vocab_size": len(tokenizer), "max_position_embeddings": positions, "pad_token_id": 0}
        text.update(bos_token_id=ids("[CLS]"), eos_token_id=ids("[SEP]"))
        model = tf.GitForCausalLM(tf.GitConfig(vision_config=vision, **text))
        processor = tf.CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=size)
    elif family == "blip2":  # a Q-Former with 4 queries and a tiny OPT that reads them, as Salesforce/blip2-opt-2.7b
        vocab_file, merges_file = _bpe_files(folder)
        tokenizer = tf.GPT2Tokenizer(vocab=str(vocab_file), merges=str(merges_file), pad_token="<pad>")
        tokenizer.add_tokens(["<image>"], special_tokens=True)
        opt = {"hidden_size": width, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 2 * width}
        opt.update(vocab_size=len(tokenizer), max_position_embeddings=positions, word_embed_proj_dim=width)
        opt.update(bos_token_id=0, eos_token_id=0, pad_token_id=tokenizer.pad_token_id)
        qformer = {**layers, "encoder_hidden_size": width, "vocab_size": len(tokenizer)}
        config = tf.Blip2Config(vision_config=vision, qformer_config=qformer, text_config=tf.OPTConfig(**opt))
        config.num_query_tokens, config.image_token_index = 4, tokenizer.convert_tokens_to_ids("<image>")
        model = tf.Blip2ForConditionalGeneration(config)
        processor = tf.BlipImageProcessor(size=size)
    elif family == "blip":
        tokenizer = tf.BertTokenizer(vocab=str(_wordpiece_file(folder)), do_lower_case=True)
        ids = tokenizer.convert_tokens_to_ids
        text = {**layers, "vocab_size": len(tokenizer), "max_position_embeddings": positions, "pad_token_id": 0}
        text.update(bos_token_id=ids("[DEC]"), sep_token_id=ids("[SEP]"), eos_token_id=ids("[SEP]"))
        model = tf.BlipForConditionalGeneration(tf.BlipConfig(text_config=text, vision_config=vision))
        processor = tf.BlipImageProcessor(size=size)
    elif family == "deit_bert":
        tokenizer = tf.BertTokenizer(vocab=str(_wordpiece_file(folder)), do_lower_case=True)
        ids = tokenizer.convert_tokens_to_ids
        decoder = tf.BertConfig(**layers, vocab_size=len(tokenizer), max_position_embeddings=positions, pad_token_id=0)
        config = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(tf.DeiTConfig(**vision), decoder)
        config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = ids("[CLS]"), ids("[SEP]"), 0
        model = tf.VisionEncoderDecoderModel(config)
    elif family in ("vit_gpt2", "swin_gpt2"):
        vocab_file, merges_file = _bpe_files(folder)
        tokenizer = tf.GPT2Tokenizer(vocab=str(vocab_file), merges=str(merges_file))
        gpt2 = {"n_embd": width, "n_layer": 2, "n_head": 4, "n_positions": positions, "bos_token_id": 0}
        decoder = tf.GPT2Config(vocab_size=len(tokenizer), eos_token_id=0, **gpt2)
        # Swin: 4 x 4 patches, one patch merging: the same 4 x 4 output grid at 32 pixels, as wide as the decoder
        swin = {"embed_dim": width // 2, "depths": [1, 1], "num_heads": [2, 2], "window_size": 2}
        encoder = tf.ViTConfig(**vision) if family == "vit_gpt2" else tf.SwinConfig(image_size=image_size, **swin)
        config = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
        config.decoder_start_token_id = config.eos_token_id = config.pad_token_id = 0
        model = tf.VisionEncoderDecoderModel(config)
    else:
        raise ValueError(f"unknown tiny family {family!r}; use one of {HF_FAMILIES}")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def readme_captioner_class() -> type:
    """``MyCaptioner``, the README's own-model example (a plain ``nn.Module`` with two ``nn.GRU``), as users copy it."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "class MyCaptioner" in b]
    namespace: dict = {}
    exec(block, namespace)
    return namespace["MyCaptioner"]


# the words and sizes of the tiny captioners of the protocol tests (:func:`tiny_captioners`, test_s2vt.py)
CAPTIONER_WORDS = ["a", "red", "circle"]
CAPTIONER_SIZES = {
    "hidden_size": 16,
    "embed_size": 8,
    "dropout": 0.0,
    "backbone": {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4, 8]},
}


def tiny_captioners() -> dict:
    """capsal's own captioners, tiny and random, by name (a constructor each) over the words a, red, circle: the
    models every protocol and padding conformance test runs over."""
    from capsal.models import S2VT, SoftAttention, TransformerCaptioner

    words, tiny = CAPTIONER_WORDS, CAPTIONER_SIZES
    return {
        "s2vt": lambda: S2VT(words, encoder="lstm", **tiny),
        "s2vt_meanpool": lambda: S2VT(words, encoder="mean", **tiny),
        "soft_attention": lambda: SoftAttention(words, **tiny),
        "transformer": lambda: TransformerCaptioner(words, **tiny),
    }

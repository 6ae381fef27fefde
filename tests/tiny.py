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
HF_FAMILIES = (
    "vit_gpt2",
    "deit_bert",
    "blip",
    "git",
    "blip2",
    "llava",
    "paligemma",
    "idefics3",
    "qwen2_vl",
    "florence2",
)
# each family's ``keep`` modes: GIT's, LLaVA's, PaliGemma's, Idefics3's and Qwen2-VL's image tokens are a prefix of
# their language model's text, the others cross-attend (BLIP-2: its Q-Former to the tower); Florence-2's DaViT tower
# cannot see one patch alone
HF_KEEP = {family: ("input", "prefix") for family in ("git", "llava", "paligemma", "idefics3", "qwen2_vl")}
HF_KEEP["florence2"] = ("prefix", "encoder_output")
HF_ATTENDING = ("vit_gpt2", "deit_bert", "blip", "florence2")  # with cross-attention maps capsal reads
HF_CASES = [(family, keep) for family in HF_FAMILIES for keep in HF_KEEP.get(family, ("input", "encoder_output"))]


def _bpe_files(
    folder: Path, specials: tuple[str, ...] = ("<|endoftext|>",), every_byte: bool = False
) -> tuple[Path, Path]:
    """GPT-2 byte-level BPE files: ``specials``, letters (``every_byte``: all 256 byte symbols, so any text encodes),
    the space mark ``Ġ``, and merges that build each word after a space (``Ġcircle``) whole, or in the pieces of
    ``HF_SPLIT``; a word without a space before it falls into letters."""
    import json

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    letters = list(bytes_to_unicode().values()) if every_byte else list("abcdefghijklmnopqrstuvwxyz")
    vocab = {token: i for i, token in enumerate(dict.fromkeys([*specials, "Ġ", *letters]))}
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
    elif family == "qwen2_vl":  # a 64 x 64 square of 8 x 8 patches, merged 2 x 2: a 4 x 4 grid of merged tokens
        model, tokenizer, processor = _tiny_qwen2_vl(folder, width)
    elif family == "florence2":  # a two-stage DaViT (stride 8: a 4 x 4 grid at 32) and BART, as Florence-2-base
        vocab_file, merges_file = _bpe_files(folder, ("<s>", "<pad>", "</s>", "<unk>"), every_byte=True)
        image_token = {"image_token": "<image>"}  # the token the processor repeats for each image token
        tokenizer = tf.BartTokenizer(vocab=str(vocab_file), merges=str(merges_file), extra_special_tokens=image_token)
        stages = {"depths": [1, 1], "patch_size": [7, 3], "patch_stride": [4, 2], "patch_padding": [3, 1]}
        stages.update(patch_prenorm=[False, True], embed_dim=[width // 2, width], num_heads=[2, 4], num_groups=[2, 4])
        vision = {**stages, "window_size": 2, "projection_dim": width, "max_position_embeddings": 8}
        vision.update(max_temporal_embeddings=4, drop_path_rate=0.0)
        bart = {"d_model": width, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4}
        bart.update(decoder_attention_heads=4, encoder_ffn_dim=2 * width, decoder_ffn_dim=2 * width)
        bart.update(vocab_size=len(tokenizer), max_position_embeddings=64, bos_token_id=0, pad_token_id=1)
        bart.update(eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0)
        config = tf.Florence2Config(vision_config=vision, text_config=bart, image_token_id=tokenizer.image_token_id)
        model = tf.Florence2ForConditionalGeneration(config)
        model.generation_config.forced_bos_token_id = 0  # its captions start </s> <s>, as Florence-2's do
        grid = (image_size // 8) ** 2
        images = tf.CLIPImageProcessor(size=size, do_center_crop=False, image_seq_length=grid + 1)  # + the mean
        processor = tf.Florence2Processor(image_processor=images, tokenizer=tokenizer)
    elif family == "idefics3":  # SigLIP, pixel shuffle 2: 64 pixels, an 8 x 8 patch grid, 4 x 4 image tokens
        model, tokenizer, processor = _tiny_idefics3(folder, layers, {**vision, "image_size": 2 * image_size})
    elif family == "idefics3_tiles":  # 64 pixels in 2 x 2 tiles of 32 and a thumbnail: 2 x 2 image tokens each
        model, tokenizer, processor = _tiny_idefics3(folder, layers, vision, tiles=2)
    elif family == "smolvlm_tiles":  # SmolVLM's classes, tiled (Idefics3's processor: SmolVLM's needs num2words)
        model, tokenizer, processor = _tiny_idefics3(folder, layers, vision, tiles=2, kind="SmolVLM")
    elif family in ("llava", "llava_full", "paligemma"):  # image tokens in the text, written by the processor
        model, tokenizer, processor = _tiny_image_text_to_text(folder, family, layers, vision, size)
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


QWEN2_VL_SPECIALS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def _tiny_qwen2_vl(folder: Path, width: int):
    """A tiny Qwen2-VL: the GPT-2 BPE files with Qwen's vision tokens added, a two-layer Qwen2 language model ``width``
    wide (head width 8: M-RoPE sections 2, 1, 1), a two-block tower ``width // 4`` wide (a merged group of four patch
    embeddings is ``width`` wide too), and processors whose ``min_pixels = max_pixels`` make every image 64 x 64."""
    import transformers as tf

    vocab_file, merges_file = _bpe_files(folder)
    tokenizer = tf.GPT2Tokenizer(vocab=str(vocab_file), merges=str(merges_file))
    tokenizer.add_tokens(list(QWEN2_VL_SPECIALS), special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids
    rope = {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0}
    text = {"hidden_size": width, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    text.update(intermediate_size=2 * width, vocab_size=len(tokenizer), max_position_embeddings=64)
    text.update(rope_parameters=rope, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    vision = {"depth": 2, "embed_dim": width // 4, "hidden_size": width, "num_heads": 2, "mlp_ratio": 2}
    vision.update(patch_size=8, spatial_merge_size=2, temporal_patch_size=2)
    config = tf.Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    cut = {"patch_size": 8, "merge_size": 2, "temporal_patch_size": 2}
    images = tf.Qwen2VLImageProcessor(min_pixels=64 * 64, max_pixels=64 * 64, **cut)
    processor = tf.Qwen2VLProcessor(
        image_processor=images, tokenizer=tokenizer, video_processor=tf.Qwen2VLVideoProcessor(**cut)
    )
    return tf.Qwen2VLForConditionalGeneration(config), tokenizer, processor


# a chat template in the tiny BPE's letters: the user turn (image, then the prompt) and the assistant's cue
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} {% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>{% else %}{{ content['text'] }}{% endif %}{% endfor %} "
    "{% endfor %}{% if add_generation_prompt %}assistant{% endif %}"
)


def _tiny_image_text_to_text(folder: Path, family: str, layers: dict, vision: dict, size: dict):
    """A tiny ``AutoModelForImageTextToText`` model of ``family`` with a BPE tokenizer that knows ``<image>``, and
    its processor (which expands ``<image>`` into one token per image token): LLaVA (CLIP tower with a class token,
    the penultimate layer's patches, a Llama language model, a chat template), PaliGemma (SigLIP tower, Gemma)."""
    import transformers as tf

    vocab_file, merges_file = _bpe_files(folder)
    tokenizer = tf.GPT2Tokenizer(vocab=str(vocab_file), merges=str(merges_file), pad_token="<pad>")
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    text = {**layers, "vocab_size": len(tokenizer), "max_position_embeddings": 128, "num_key_value_heads": 2}
    text.update(bos_token_id=0, eos_token_id=0, pad_token_id=tokenizer.pad_token_id, head_dim=8)
    if family in ("llava", "llava_full"):  # llava_full: the class token an image token, two layers side by side
        strategy, layer = ("full", [-2, -1]) if family == "llava_full" else ("default", -2)
        config = tf.LlavaConfig(
            vision_config=tf.CLIPVisionConfig(**vision),
            text_config=tf.LlamaConfig(**text),
            image_token_index=image_id,
            vision_feature_select_strategy=strategy,
            vision_feature_layer=layer,
        )
        config.image_seq_length = (vision["image_size"] // vision["patch_size"]) ** 2
        # padded to a square, then resized and centre-cropped, as llava-hf/llava-1.5-7b-hf
        image_processor = tf.LlavaImageProcessor(size={"shortest_edge": size["height"]}, crop_size=size, do_pad=True)
        processor = tf.LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=vision["patch_size"],
            vision_feature_select_strategy=strategy,
            num_additional_image_tokens=1,
            chat_template=TINY_CHAT_TEMPLATE,
        )
        return tf.LlavaForConditionalGeneration(config), tokenizer, processor
    tokens = (vision["image_size"] // vision["patch_size"]) ** 2
    siglip = tf.SiglipVisionConfig(**vision)
    width = layers["hidden_size"]
    config = tf.PaliGemmaConfig(
        vision_config=siglip,
        text_config=tf.GemmaConfig(**text),
        image_token_id=image_id,
        projection_dim=width,
        hidden_size=width,
    )
    config.text_config.num_image_tokens = config.vision_config.num_image_tokens = tokens
    image_processor = tf.SiglipImageProcessor(size=size)
    image_processor.image_seq_length = tokens
    processor = tf.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return tf.PaliGemmaForConditionalGeneration(config), tokenizer, processor


def _tiny_idefics3(folder: Path, layers: dict, vision: dict, tiles: int = 0, kind: str = "Idefics3"):
    """A tiny ``Idefics3ForConditionalGeneration`` (SigLIP tower, pixel shuffle by 2, Llama) whose processor gives one
    grid (``do_image_splitting`` off), or ``tiles x tiles`` tiles of the tower's size and a thumbnail, its tokenizer
    knowing the processor's image and tile tokens."""
    import transformers as tf

    text = {**layers, "max_position_embeddings": 128, "num_key_value_heads": 2, "head_dim": 8}
    config, tokenizer, processor = idefics3_parts(folder, text, vision, tiles=tiles, kind=kind)
    return getattr(tf, f"{kind}ForConditionalGeneration")(config), tokenizer, processor


def idefics3_parts(folder: Path, text: dict, vision: dict, tiles: int = 0, kind: str = "Idefics3", scale: int = 2):
    """The config (Llama options ``text``, vocabulary the tokenizer's unless ``text`` gives one; tower options
    ``vision``; pixel shuffle by ``scale``), tokenizer and processor of an Idefics3 (``kind="SmolVLM"``: SmolVLM's
    classes, Idefics3's processor) without building the model: :func:`_tiny_idefics3`, and a benchmark's sized model."""
    import transformers as tf

    vocab_file, merges_file = _bpe_files(folder)
    tokenizer = tf.GPT2Tokenizer(vocab=str(vocab_file), merges=str(merges_file), pad_token="<pad>")
    tiles_tokens = [f"<row_{i + 1}_col_{j + 1}>" for i in range(tiles) for j in range(tiles)]
    tokenizer.add_tokens(["<fake_token_around_image>", "<image>", "<global-img>", *tiles_tokens], special_tokens=True)
    text = {"vocab_size": len(tokenizer), **text, "bos_token_id": 0, "eos_token_id": 0}
    config = getattr(tf, f"{kind}Config")(
        vision_config=getattr(tf, f"{kind}VisionConfig")(**vision),
        text_config=tf.LlamaConfig(**text, pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
    )
    side = vision["image_size"]
    image_processor = tf.Idefics3ImageProcessor(
        size={"longest_edge": side * max(tiles, 1)}, max_image_size={"longest_edge": side}, do_image_splitting=tiles > 0
    )
    tokens = (side // vision["patch_size"] // scale) ** 2
    processor = tf.Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=tokens)
    return config, tokenizer, processor


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

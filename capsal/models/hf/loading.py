"""Loading a pretrained captioner (a hub id or a ``save_pretrained`` folder) into its family, and the
``save_pretrained`` files a capsal checkpoint carries so that it loads alone."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from capsal.errors import UserError
from capsal.models.hf.blip import BlipFamily
from capsal.models.hf.blip2 import Blip2Family
from capsal.models.hf.family import Family
from capsal.models.hf.florence2 import Florence2Family
from capsal.models.hf.git import GitFamily
from capsal.models.hf.image_text_to_text import Idefics3Family, LlavaFamily, PaliGemmaFamily, SmolVLMFamily
from capsal.models.hf.qwen2_vl import Qwen2VLFamily
from capsal.models.hf.vision_encoder_decoder import VisionEncoderDecoderFamily

# the families capsal explains, by ``config.model_type``
FAMILIES: dict[str, type[Family]] = {
    family.model_type: family
    for family in (
        VisionEncoderDecoderFamily,
        BlipFamily,
        GitFamily,
        Blip2Family,
        LlavaFamily,
        PaliGemmaFamily,
        Idefics3Family,
        SmolVLMFamily,
        Qwen2VLFamily,
        Florence2Family,
    )
}
# what ``save_pretrained`` writes besides the weights: a capsal checkpoint carries these, its state dict the weights
PRETRAINED_FILE_SUFFIXES = (".json", ".txt", ".model", ".jinja")  # .jinja: a chat template


def require_transformers():
    """The ``transformers`` module, or one line saying how to install it."""
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - the dev extras install it
        raise UserError("model=hf_captioner needs the transformers package: pip install 'capsal[hf]'") from error
    return transformers


def offline_hint(name_or_path: str, error: BaseException) -> str:
    """The one line a user sees when ``name_or_path`` cannot be loaded."""
    reason = " ".join(str(error).split()).split(". ")[0][:160]
    return (
        f"model.name_or_path={name_or_path} could not be loaded ({type(error).__name__}: {reason}); with no network, "
        "pass a local folder written by save_pretrained (the model, its tokenizer and its image processor, e.g. "
        "model.save_pretrained(f); tokenizer.save_pretrained(f); processor.save_pretrained(f)) or download the "
        "hub id once into the Hugging Face cache (hf download <id>) where there is a network"
    )


def load_parts(name_or_path: str, from_config: bool = False):
    """``(model, tokenizer, processor)`` of a hub id or a ``save_pretrained`` folder (the processor its family's
    ``processor_class`` loads: the image processor, or the whole processor with the tokenizer inside); ``from_config``:
    the architecture with random weights (benchmarks; capsal checkpoints, whose state dict holds the weights)."""
    transformers = require_transformers()
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        name_or_path = str(folder)
    elif name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise UserError(
            f"model.name_or_path={name_or_path} is no folder; pass a folder written by save_pretrained or a hub id "
            "such as nlpconnect/vit-gpt2-image-captioning"
        )
    try:
        # never the code a model repository or a checkpoint's files may name (auto_map): capsal's families are built in
        config = transformers.AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise UserError(offline_hint(name_or_path, error)) from error
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise UserError(
            f"model.name_or_path={name_or_path} is a {config.model_type!r} model; capsal explains "
            f"{', '.join(f.model_class for f in FAMILIES.values())}"
        )
    try:
        processor = getattr(transformers, family.processor_class).from_pretrained(name_or_path, trust_remote_code=False)
        tokenizer = getattr(processor, "tokenizer", None) or transformers.AutoTokenizer.from_pretrained(
            name_or_path, trust_remote_code=False
        )
    except (OSError, ValueError) as error:
        raise UserError(offline_hint(name_or_path, error)) from error
    except ImportError as error:  # a processor needing a package capsal does not install (SmolVLM's num2words)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"model.name_or_path={name_or_path}: its processor cannot load: {reason}") from error
    model_class = getattr(transformers, family.model_class)
    model = model_class(config) if from_config else model_class.from_pretrained(name_or_path)
    return model, tokenizer, processor


def family_of(model: nn.Module) -> Family:
    """The family adapter around a loaded model (one of :data:`FAMILIES`)."""
    return FAMILIES[model.config.model_type](model)


def pretrained_files(model: nn.Module, tokenizer: Any, processor: Any) -> dict[str, bytes]:
    """Everything ``save_pretrained`` writes but the weights (config, generation config, tokenizer, image
    processor), by file name."""
    with tempfile.TemporaryDirectory() as folder:
        model.config.save_pretrained(folder)
        model.generation_config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        processor.save_pretrained(folder)
        return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.suffix in PRETRAINED_FILE_SUFFIXES}


def write_pretrained_files(files: Any, folder: Path, checkpoint_path: Any) -> None:
    """The ``save_pretrained`` files a checkpoint carries, written into ``folder`` for ``from_pretrained`` to read:
    only bytes under plain file names of the kinds :func:`pretrained_files` saves, so a crafted name (``../x``, an
    absolute path) cannot write outside ``folder``."""
    if not isinstance(files, dict) or not files:
        raise UserError(f"{checkpoint_path} holds no Hugging Face model files; save it with capsal-train again")
    for name, data in files.items():
        plain_name = isinstance(name, str) and name == Path(name).name and not name.startswith(".")
        if not (plain_name and name.endswith(PRETRAINED_FILE_SUFFIXES) and isinstance(data, bytes)):
            raise UserError(
                f"{checkpoint_path} carries a Hugging Face file named {name!r}, which capsal does not write (it wants "
                f"plain file names ending in {', '.join(PRETRAINED_FILE_SUFFIXES)}); save the model with capsal-train "
                "again"
            )
        (folder / name).write_bytes(data)

"""Pretrained Hugging Face captioners behind the encoder-decoder protocol (``pip install capsal[hf]``).

Supported families, one adapter each (:class:`~capsal.models.hf.family.Family`): ``VisionEncoderDecoderModel``
(ViT, DeiT, Swin... encoders with GPT-2/BERT-style decoders that cross-attend: ViT-GPT2 and kin,
:mod:`~capsal.models.hf.vision_encoder_decoder`), ``BlipForConditionalGeneration`` (:mod:`~capsal.models.hf.blip`),
``GitForCausalLM`` (:mod:`~capsal.models.hf.git`: image tokens as a prefix of a language model's own self-attention,
with its own ``keep`` modes, ``input`` and ``prefix``, described there) and
``Blip2ForConditionalGeneration`` (:mod:`~capsal.models.hf.blip2`: a querying transformer between the tower and an
OPT language model that reads its outputs as a prefix; ``keep=input`` and ``keep=encoder_output``, described there),
``LlavaForConditionalGeneration``, ``PaliGemmaForConditionalGeneration``, ``Idefics3ForConditionalGeneration`` and
``SmolVLMForConditionalGeneration`` (:mod:`~capsal.models.hf.image_text_to_text`: image tokens inside the language
model's text, written by the model's processor; ``keep=input`` and ``keep=prefix``),
``Qwen2VLForConditionalGeneration`` (:mod:`~capsal.models.hf.qwen2_vl`: merged tower tokens in place of the
language model's image tokens, placed by M-RoPE; ``keep=input`` and ``keep=prefix``, described there) and
``Florence2ForConditionalGeneration`` (:mod:`~capsal.models.hf.florence2`: image tokens and a task prompt as a BART
encoder's input; ``keep=prefix`` and ``keep=encoder_output``, described there).
:class:`HFCaptioner` is the LightningModule users configure; it holds the ``transformers`` model and its family.

Items are the image's patch tokens, an ``h x w`` grid read row-major; pixels go through the model's own image
processor (resize, normalisation: the grid covers the whole image, so ``Saliency.to_image_size`` maps cells back
to the original pixels; a processor's centre crop and padding are turned off for that reason). ``keep`` says where
"keep only item i" happens (for the cross-attending families):

- ``keep=input`` (the paper's Eq. 7 literally, and what its reasoning supports: the model sees nothing of the image
  but item i): ``features`` are the patch embeddings before the encoder; ``encode`` puts the kept patches, each at
  its own position embedding, after the class token (and DeiT's distillation token) and runs the whole vision
  encoder on them. ViT, DeiT and BLIP encoders; Swin's shifted windows and patch merging need the full grid.
- ``keep=encoder_output``: ``features`` are the vision encoder's output patch tokens for the whole image (one pass);
  ``encode`` hands the kept ones to the decoder's cross-attention. Cheaper, and a different question: where does
  the decoder read the word, given an encoder that saw everything (each token has mixed in the rest of the image).
  The encoder's class token is left out in this mode: it summarises the whole image, so keeping it beside token i
  would show the decoder everything; captions can therefore differ slightly from the model's own.

Words come from :class:`PretrainedTokenizer`: captions are encoded as :func:`capsal.text.tokenize`'s words (lower
case, no punctuation) so word spans mean what the datasets mean; a word's subword tokens are summed into one
``Saliency`` row. BLIP's prompt (``prompt=``, e.g. "a picture of") sits in the prefix after bos and is never
explained as words. ``generate`` is the model's own ``generate`` (greedy or beam) on the decoder; ``attention`` is
the decoder's cross-attention, the mean over heads of its last layer, on the patch tokens.
"""

from __future__ import annotations

from capsal.models.hf.captioner import KEEP, HFCaptioner
from capsal.models.hf.family import CrossAttentionFamily, Family
from capsal.models.hf.loading import FAMILIES, load_parts, offline_hint
from capsal.models.hf.tokenizer import PretrainedTokenizer

# The public path, the one configs name (``_target_``) and checkpoints record (``capsal.model_class``).
HFCaptioner.__module__ = __name__

__all__ = [
    "FAMILIES",
    "KEEP",
    "CrossAttentionFamily",
    "Family",
    "HFCaptioner",
    "PretrainedTokenizer",
    "load_parts",
    "offline_hint",
]

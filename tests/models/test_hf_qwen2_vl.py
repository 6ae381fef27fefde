"""Qwen2-VL (``Qwen2VLForConditionalGeneration``) through capsal, checked against the model's own forward, tower and
``generate``: a tiny random model saved by ``save_pretrained`` (tests/tiny.py) and loaded by path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers as tf
from hydra.utils import instantiate
from tiny import compose_train, save_tiny_hf
from transformers.vision_utils import get_vision_position_ids

from capsal.errors import UserError
from capsal.models.hf import HFCaptioner
from capsal.models.protocol import check_no_item

QUERY = "a big yellow triangle"
# a chat template of Qwen2-VL-Instruct's shape: a user turn holding the image, then the assistant's turn opened
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_tiny_hf(tmp_path_factory.mktemp("qwen2_vl") / "plain", "qwen2_vl")


def load(folder: Path, keep: str, *overrides: str) -> HFCaptioner:
    cfg = compose_train("model=hf_captioner", f"model.name_or_path={folder}", f"model.keep={keep}", *overrides)
    return instantiate(cfg.model).eval().double()


def images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 1, 3, 40, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def own_inputs(model: HFCaptioner, pixels: torch.Tensor, tokens: torch.Tensor) -> dict:
    """The model's own inputs for ``tokens`` after the image: ``<|vision_start|>``, 16 image tokens, then ``tokens``
    (capsal's bos is ``<|vision_end|>``), with the flat patches, the grid and the token types the processor gives."""
    config = model.hf.config
    values = model.pixel_values(pixels[:, 0])
    batch = tokens.shape[0]
    head = torch.tensor([[config.vision_start_token_id] + [config.image_token_id] * 16] * batch)
    ids = torch.cat([head, tokens], dim=1)
    return {
        "input_ids": ids,
        "pixel_values": values.flatten(0, 1),
        "image_grid_thw": torch.tensor([[1, 8, 8]] * batch),
        "mm_token_type_ids": (ids == config.image_token_id).int(),
    }


def until_eos(rows: torch.Tensor, eos: int) -> list[list[int]]:
    """Each row up to its first eos (what follows is padding, which capsal and ``generate`` fill differently)."""
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows.tolist()]


def test_the_square_is_the_processors_own_cut_of_an_image_of_its_size(folder):
    """A 64 x 64 image needs no resize: capsal's patches are the Qwen2-VL processor's own, per image."""
    model = load(folder, "prefix")
    pixels = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    theirs = tf.AutoImageProcessor.from_pretrained(folder)(images=pixels, do_rescale=False, return_tensors="pt")
    assert theirs["image_grid_thw"].tolist() == [[1, 8, 8]] * 2
    torch.testing.assert_close(model.pixel_values(pixels).flatten(0, 1), theirs["pixel_values"].double())


@pytest.mark.parametrize("keep", ["prefix", "input"])
def test_every_item_is_the_models_own_forward_and_generate(folder, keep):
    model = load(folder, keep)
    pixels = images()
    items = model.items(model.features(pixels))
    tokens = torch.tensor([model.vocab.encode(QUERY)] * 2)
    assert tokens[0, 0] == model.hf.config.vision_end_token_id  # the words follow <|vision_end|>
    inputs = own_inputs(model, pixels, tokens)
    theirs = torch.log_softmax(model.hf(**inputs).logits[:, 17:], dim=-1)
    torch.testing.assert_close(model.token_logprobs(model.encode(items), tokens), theirs, atol=1e-10, rtol=0)
    for beams in (1, 3):
        ours = model.generate(items, beam_size=beams, max_len=6)
        prefix = own_inputs(model, pixels, tokens[:, :1])
        generated = model.hf.generate(**prefix, max_new_tokens=6, num_beams=beams, do_sample=False)[:, 17:]
        assert until_eos(ours, model.vocab.eos_id) == until_eos(generated, model.vocab.eos_id)


def test_keep_prefix_hides_a_token_at_the_positions_of_the_whole_sequence(folder):
    """Item 5 (row 0) and item 9 (row 1) hidden: the model's own forward and generate with those image tokens masked
    and the whole sequence's M-RoPE positions passed; letting positions follow the mask differs (a plain language
    model's count of the visible tokens) or fails (Qwen2-VL's own derivation), which is why capsal passes them."""
    model = load(folder, "prefix")
    pixels = images()
    items = model.items(model.features(pixels))
    tokens = torch.tensor([model.vocab.encode(QUERY)[:-1]] * 2)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 5], mask[1, 9] = False, False
    ours = model.token_logprobs(model.encode(items, mask), tokens)
    inputs = own_inputs(model, pixels, tokens)
    attention = torch.ones_like(inputs["input_ids"])
    attention[0, 1 + 5], attention[1, 1 + 9] = 0, 0
    whole, _ = model.hf.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    hidden = model.hf(**inputs, attention_mask=attention, position_ids=whole).logits[:, 17:]
    torch.testing.assert_close(ours, torch.log_softmax(hidden, dim=-1), atol=1e-10, rtol=0)
    assert not torch.allclose(ours, model.token_logprobs(model.encode(items), tokens))
    counted = repeat_rows((attention.cumsum(dim=1) - 1).clamp(min=0))
    moved = model.hf(**inputs, attention_mask=attention, position_ids=counted).logits[:, 17:]
    assert not torch.allclose(ours, torch.log_softmax(moved, dim=-1))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        model.hf(**inputs, attention_mask=attention)
    # generation after bos: the model's own generate with the same mask and positions (each step one further)
    ours = model.generate(items, mask, max_len=6)
    start = own_inputs(model, pixels, tokens[:, :1])
    step = {"attention_mask": attention[:, :18], "position_ids": whole[..., :18]}
    theirs = model.hf.generate(**start, **step, max_new_tokens=6, do_sample=False)[:, 17:]
    assert until_eos(ours, model.vocab.eos_id) == until_eos(theirs, model.vocab.eos_id)


def test_a_row_with_no_item_is_the_model_with_every_image_token_hidden(folder):
    model = load(folder, "prefix")
    pixels = images()
    tokens = torch.tensor([model.vocab.encode(QUERY)[:-1]] * 2)
    ours = check_no_item(model, torch.randn(2, 3, model.feature_size, dtype=torch.float64), tokens)
    inputs = own_inputs(model, pixels, tokens)
    attention = (inputs["input_ids"] != model.hf.config.image_token_id).long()
    whole, _ = model.hf.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    theirs = model.hf(**inputs, attention_mask=attention, position_ids=whole).logits[:, 17:]
    torch.testing.assert_close(ours, torch.log_softmax(theirs, dim=-1), atol=1e-10, rtol=0)


def repeat_rows(positions: torch.Tensor) -> torch.Tensor:
    """``(3, B, L)``: 1D positions on the temporal, height and width rows alike."""
    return positions[None].expand(3, -1, -1)


def test_keep_input_runs_the_tower_on_the_kept_groups_alone_as_the_models_own_tower_does(folder):
    """Items 0, 5 and 10 of row 0 (item 15 of row 1) kept: the merged tokens are the model's own tower run on those
    groups' patches alone, each patch at its own 2D rotary position (``position_ids``, ``cu_seqlens``)."""
    model = load(folder, "input")
    pixels = images()
    items = model.items(model.features(pixels))
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 5, 10]], mask[1, 15] = True, True
    memory = model.encode(items, mask)["memory"]
    values = model.pixel_values(pixels[:, 0])
    grid = torch.tensor([[1, 8, 8]])
    where = get_vision_position_ids(grid, 2)
    tower = model.hf.model.visual
    for row, kept in ((0, [0, 5, 10]), (1, [15])):
        patches = torch.tensor([4 * k + j for k in kept for j in range(4)])
        cuts = torch.tensor([0, len(patches)], dtype=torch.int32)
        theirs = tower(values[row, patches], grid_thw=grid, position_ids=where[patches], cu_seqlens=cuts)
        torch.testing.assert_close(memory[row, kept], theirs.pooler_output, atol=1e-10, rtol=0)
        assert memory[row, ~mask[row]].abs().max() == 0
    alone = tower(values[0, :4], grid_thw=grid, position_ids=where[:4], cu_seqlens=torch.tensor([0, 4]).int())
    assert not torch.allclose(memory[0, 0], alone.pooler_output[0])  # kept groups see each other, as one image


def test_a_chat_template_is_prefix_and_generation_follows_the_processors_own_prompt(folder, tmp_path):
    """With a chat template the words follow the assistant's turn; generate equals the model's own generate on
    what Qwen2VLProcessor makes of the rendered template and the image; no template token becomes a word."""
    chat = tmp_path / "chat"
    shutil.copytree(folder, chat)
    (chat / "chat_template.jinja").write_text(TEMPLATE)
    model = load(chat, "prefix")
    processor = tf.AutoProcessor.from_pretrained(chat)
    message = [{"role": "user", "content": [{"type": "image"}]}]
    text = processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
    square = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    inputs = processor(text=[text] * 2, images=list(square), do_rescale=False, return_tensors="pt")
    assert model.vocab.prefix == inputs["input_ids"][0, -1:].tolist()  # the template's last token ("\n")
    items = model.items(model.features(square[:, None]))
    ours = model.generate(items, max_len=6)
    inputs["pixel_values"] = inputs["pixel_values"].double()
    theirs = model.hf.generate(**inputs, max_new_tokens=6, do_sample=False)[:, inputs["input_ids"].shape[1] - 1 :]
    assert until_eos(ours, model.vocab.eos_id) == until_eos(theirs, model.vocab.eos_id)
    words, owners = model.vocab.words_of(model.vocab.encode(QUERY))
    assert words == ["a", "big", "yellow", "triangle"] and owners[0] == -1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": {"longest_edge": 255, "shortest_edge": 0}}, r"max_pixels=255 \(size\.longest_edge\) leaves no"),
        ({"patch_size": 14}, r"cuts patch_size/merge_size \(14, 2\), the model's tower \(8, 2\)"),
    ],
)
def test_an_image_processor_that_cannot_cut_the_models_grid_stops_in_one_line(folder, tmp_path, change, message):
    """max_pixels below one 16 x 16 square of merged patches, or patches the tower does not cut."""
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    config = json.loads((broken / "processor_config.json").read_text())
    config["image_processor"].update(change)
    (broken / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=message):
        HFCaptioner(str(broken), keep="prefix")


def test_keep_encoder_output_is_refused_in_one_line(folder):
    with pytest.raises(UserError, match=r"reads its merged image tokens as its language model's input: use model\.k"):
        HFCaptioner(str(folder), keep="encoder_output")

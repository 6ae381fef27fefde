"""Pretrained Hugging Face captioners through the protocol: tiny random models of each supported family, built from
configs and tokenizer vocabulary files written here, saved with ``save_pretrained`` and loaded by path through the
Hydra config (never a download: ``HF_HUB_OFFLINE=1`` in ``conftest.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from tiny import HF_ATTENDING, HF_CASES, HF_FAMILIES, HF_KEEP, compose_train, save_tiny_hf

from capsal import check_protocol
from capsal.errors import UserError
from capsal.explainers import available_explainers, build_explainer
from capsal.explainers.base import word_rows
from capsal.models.hf import HFCaptioner
from capsal.models.protocol import check_no_item

QUERY = "a big yellow triangle"  # yellow and triangle are two tokens each in every tiny tokenizer
PROMPT = {"blip": "a picture of", "blip2": "a picture of", "llava": "a picture of", "paligemma": "caption en"}
# image tokens in the language model's text, the prefix written by the processor
IMAGE_TEXT = ("llava", "paligemma", "idefics3")
ATTENTION_READERS = {"rollout", "relevancy", "soft_attention"}  # the explainers that read a model's attention maps


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {family: save_tiny_hf(root / family, family) for family in HF_FAMILIES}


def load(folder: Path, family: str, keep: str | None = None, *overrides: str):
    """The captioner ``model=hf_captioner model.name_or_path=<folder>`` composes, in eval mode (``keep``: by default
    the family's first mode)."""
    keep = keep or HF_KEEP.get(family, ("input",))[0]
    prompt = [f"model.prompt='{PROMPT[family]}'"] if family in PROMPT else []
    cfg = compose_train("model=hf_captioner", f"model.name_or_path={folder}", f"model.keep={keep}", *prompt, *overrides)
    return instantiate(cfg.model).eval()


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, 3, 40, 48, generator=generator)  # any size: the image processor resizes


@pytest.mark.parametrize(("family", "keep"), HF_CASES)
def test_a_saved_folder_loads_through_the_config_and_implements_the_protocol(folders, family, keep):
    model = load(folders[family], family, keep)
    assert check_protocol(model) == []
    grid = model.features(images())
    assert grid.shape == (2, 1, 4, 4, model.feature_size)  # 32 x 32 pixels in 8 x 8 patches (Idefics3: 64, shuffled)
    assert model.item_layout(tuple(grid.shape[1:4])).num_items == 16


# Qwen2-VL's tower takes flat patches and a grid: tests/models/test_hf_qwen2_vl.py checks it against its own forward
KEEP_INPUT_TOWERS = [f for f in HF_FAMILIES if "input" in HF_KEEP.get(f, ("input",)) and f != "qwen2_vl"]


@pytest.mark.parametrize("family", KEEP_INPUT_TOWERS)
def test_keep_input_with_every_item_is_the_models_own_encoder_and_generation(folders, family):
    """All items at their own positions give exactly the vision encoder's output, and ``generate`` the model's own
    greedy caption."""
    model = load(folders[family], family)
    pixels = images()
    values = model.pixel_values(pixels[:, 0])
    state = model.encode(model.items(model.features(pixels)))
    tower = model.vision(pixel_values=values.flatten(0, -4)).last_hidden_state  # Idefics3: (1, B, 3, H, W)
    if family == "git":  # the projected tower output is the language model's prefix: its logits are GIT's own
        torch.testing.assert_close(state["memory"], model.hf.git.visual_projection(tower))
        tokens = torch.tensor([model.vocab.encode(QUERY)] * 2)
        theirs = model.hf(input_ids=tokens, pixel_values=values).logits[:, state["memory"].shape[1] :]
        torch.testing.assert_close(model.token_logits(state, tokens), theirs)
    elif family == "blip2":  # the Q-Former reads the whole tower output; the language model's logits are BLIP-2's
        torch.testing.assert_close(state["memory"], tower)
        tokens = torch.tensor([model.vocab.encode(QUERY)] * 2)
        queries = model.hf.config.num_query_tokens
        image = torch.full((2, queries), model.hf.config.image_token_id)
        theirs = model.hf(input_ids=torch.cat([image, tokens], dim=1), pixel_values=values).logits[:, queries:]
        torch.testing.assert_close(model.token_logits(state, tokens), theirs)
    elif family in IMAGE_TEXT:  # the projected image tokens are the model's own; its logits too, on every token
        features = model.hf.get_image_features(values).pooler_output  # Idefics3: one sample, both images
        torch.testing.assert_close(state["memory"], torch.cat(list(features)).reshape(state["memory"].shape))
        tokens = torch.tensor([model.vocab.encode(QUERY)] * 2)
        theirs = model.hf(input_ids=tokens, pixel_values=values, **prefix_kinds(model, tokens)).logits
        torch.testing.assert_close(model.token_logits(state, tokens), theirs)
    else:
        torch.testing.assert_close(state["memory"], model.project(tower))
    ours = model.generate(model.items(model.features(pixels)), max_len=6)
    prompt = torch.tensor([[*model.vocab.prefix, model.vocab.eos_id]] * 2)  # BLIP drops the prompt's last token
    extra = {"input_ids": prompt} if family == "blip" else {}
    if family in IMAGE_TEXT:  # the processor's prefix: image tokens, chat template or prompt
        prefix = torch.tensor([model.vocab.prefix] * 2)
        extra = {"input_ids": prefix, **prefix_kinds(model, prefix)}
    if family == "blip2":  # its image tokens, then bos and the prompt
        image = torch.full((2, model.hf.config.num_query_tokens), model.hf.config.image_token_id)
        extra = {"input_ids": torch.cat([image, torch.tensor([model.vocab.prefix] * 2)], dim=1)}
    theirs = model.hf.generate(pixel_values=values, max_new_tokens=6, num_beams=1, do_sample=False, **extra)
    if family == "blip2":  # BLIP-2's rows start with its image tokens
        theirs = theirs[:, model.hf.config.num_query_tokens :]
    prefix, eos = len(model.vocab.prefix), model.vocab.eos_id

    def until_eos(row: list[int]) -> list[int]:
        body = row[prefix:]
        return body[: body.index(eos) + 1] if eos in body else body

    assert [until_eos(row) for row in ours.tolist()] == [until_eos(row) for row in theirs.tolist()]


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_subword_tokens_belong_to_their_words_and_prompts_to_none(folders, family):
    vocab = load(folders[family], family).vocab
    ids = vocab.encode("A big, yellow triangle.")
    words, owners = vocab.words_of(ids)
    assert words == ["a", "big", "yellow", "triangle"]
    prefix = len(vocab.prefix)
    assert owners[:prefix] == [-1] * prefix and owners[-1] == -1  # bos, prompt and eos belong to no word
    assert owners[prefix:-1] == [0, 1, 2, 2, 3, 3]  # yellow and triangle are two tokens each
    bpe = ("vit_gpt2", "blip2", "qwen2_vl", "florence2", *IMAGE_TEXT)  # byte-level BPE spells any word in letters
    assert vocab.unknown_words("a purple triangle") == ([] if family in bpe else ["purple"])


def prefix_kinds(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """PaliGemma's ``token_type_ids`` (0 on the prefix, its bidirectional part; 1 on the words), built by hand."""
    if model.hf.config.model_type != "paligemma":
        return {}
    kinds = torch.ones_like(tokens)
    kinds[:, : len(model.vocab.prefix)] = 0
    return {"token_type_ids": kinds}


def reference_losses(model, items: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``Loss(t, i, w)`` per word, one item at a time, summing each word's subword tokens by hand: ``(B, n, m)``."""
    batch, m = items.shape[:2]
    per_token = torch.zeros(batch, tokens.shape[1] - 1, m, dtype=torch.float64)
    for i in range(m):
        state = model.encode(items[:, i : i + 1], None, torch.full((batch, 1), i))
        logprobs = model.token_logprobs(state, tokens[:, :-1])
        per_token[:, :, i] = -logprobs.gather(-1, tokens[:, 1:, None])[..., 0]
    words = torch.zeros_like(per_token)
    for b, row in enumerate(tokens.tolist()):
        for column, owner in enumerate(word_rows(model.vocab.words_of(row)[1][1:], tokens.shape[1] - 1)):
            words[b, owner] += per_token[b, column]
    return words


@pytest.mark.parametrize(("family", "keep"), HF_CASES)
def test_batched_caption_guided_equals_one_item_at_a_time_in_float64_with_one_row_per_word(folders, family, keep):
    model = load(folders[family], family, keep).double()
    items = model.items(model.features(images().double()))
    saliency = build_explainer("caption_guided").explain(model, items, tokens=QUERY)
    assert saliency.words == [["a", "big", "yellow", "triangle"]] * 2
    assert saliency.word_mask.sum(dim=1).tolist() == [4, 4]
    expected = reference_losses(model, items, saliency.tokens)
    torch.testing.assert_close(saliency.losses[:, :4], expected[:, :4], atol=1e-6, rtol=0)
    assert saliency.e.shape == (2, saliency.word_mask.shape[1], 16)


@pytest.mark.parametrize(("family", "keep"), HF_CASES)
def test_every_builtin_explainer_runs_on_the_models_caption_and_a_query(folders, family, keep):
    model = load(folders[family], family, keep)
    items = model.items(model.features(images()))
    refused = {name for name in available_explainers() if build_explainer(name).refusal(model) is not None}
    assert refused == (set() if family in HF_ATTENDING else ATTENTION_READERS)  # GIT, BLIP-2: no maps capsal reads
    for name in sorted(refused):
        with pytest.raises(UserError, match=f"explainer {name} needs .*; HFCaptioner has none: use explainer="):
            build_explainer(name).explain(model, items)
    for name in sorted(set(available_explainers()) - refused):
        for sentence in (None, QUERY):
            saliency = build_explainer(name).explain(model, items, tokens=sentence)
            n = saliency.word_mask.shape[1]
            assert saliency.scores.shape == (2, n, 16), name
            real = saliency.e[saliency.word_mask]
            assert torch.isfinite(real).all() and real.amax(dim=-1).eq(1).all(), name


@pytest.mark.parametrize(("family", "keep"), [case for case in HF_CASES if case[0] in ("git", "blip2")])
def test_a_prefix_family_with_no_item_is_its_language_model_on_the_words_alone(folders, family, keep):
    model = load(folders[family], family, keep)
    tokens = torch.tensor([model.vocab.encode(QUERY)[:-1]] * 2)
    language = model.hf if family == "git" else model.hf.language_model  # without pixels, without query tokens
    alone = torch.log_softmax(language(input_ids=tokens).logits, dim=-1)
    torch.testing.assert_close(check_no_item(model, torch.randn(2, 3, model.feature_size), tokens), alone)


def assert_the_masked_items_leak_nothing(model, items: torch.Tensor) -> None:
    """Item 5 (row 0) and item 9 (row 1) among every item, the rest masked, give those items alone, and differ from
    every item seen."""
    tokens = torch.tensor([model.vocab.encode(QUERY)[:-1]] * 2)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 5], mask[1, 9] = True, True
    hidden = model.token_logprobs(model.encode(items, mask), tokens)
    alone = model.token_logprobs(model.encode(items[[0, 1], [5, 9]][:, None]), tokens)
    torch.testing.assert_close(hidden, alone, atol=1e-10, rtol=0)
    assert not torch.allclose(hidden[0], model.token_logprobs(model.encode(items), tokens)[0])


def test_blip2_keep_encoder_output_is_its_qformer_reading_the_kept_patch_tokens_alone(folders):
    """Every item: the Q-Former on the tower's output less its class token; item i among every item, the rest
    masked from the Q-Former's cross-attention, gives item i alone: masked patches leak nothing."""
    model = load(folders["blip2"], "blip2", "encoder_output").double()
    pixels = images().double()
    items = model.items(model.features(pixels))
    hf = model.hf
    tower = hf.vision_model(pixel_values=model.pixel_values(pixels[:, 0])).last_hidden_state
    query = hf.qformer(query_embeds=hf.query_tokens.expand(2, -1, -1), encoder_hidden_states=tower[:, 1:])
    torch.testing.assert_close(model.encode(items)["queries"], hf.language_projection(query.last_hidden_state))
    assert_the_masked_items_leak_nothing(model, items)


def test_git_keep_prefix_hides_image_tokens_as_if_they_were_not_there(folders):
    """Item i among every item, the rest hidden by the mask, gives item i's prefix alone: hidden tokens leak nothing
    and move no position."""
    model = load(folders["git"], "git", "prefix").double()
    items = model.items(model.features(images().double()))
    assert_the_masked_items_leak_nothing(model, items)


def test_the_cross_attending_families_refuse_keep_prefix_and_git_refuses_encoder_output(folders):
    with pytest.raises(UserError, match=r"model\.keep=prefix needs image tokens in front of a language model's text"):
        HFCaptioner(str(folders["blip"]), keep="prefix")
    with pytest.raises(UserError, match=r"GitForCausalLM reads its image tokens as a prefix: use model\.keep=input"):
        HFCaptioner(str(folders["git"]), keep="encoder_output")
    with pytest.raises(UserError, match=r"model\.keep=prefix would hide BLIP-2's projected query tokens, which are no"):
        HFCaptioner(str(folders["blip2"]), keep="prefix")


def test_soft_attention_reads_the_last_layers_cross_attention_on_the_patches(folders):
    model = load(folders["vit_gpt2"], "vit_gpt2", "encoder_output")
    items = model.items(model.features(images()))
    saliency = build_explainer("soft_attention").explain(model, items, tokens="a circle")
    assert saliency.words == [["a", "circle"]] * 2
    # encoder_output has no class token: each one-token word's weights are a distribution over the 16 patches
    torch.testing.assert_close(saliency.scores[:, :2].sum(-1), torch.ones(2, 2))


def test_a_swin_encoder_is_explained_at_its_output_and_refused_at_its_input(tmp_path):
    folder = save_tiny_hf(tmp_path / "swin", "swin_gpt2")
    with pytest.raises(UserError, match=r"SwinModel mixes patches before its output: use model\.keep=encoder_output"):
        HFCaptioner(str(folder), keep="input")
    model = load(folder, "swin_gpt2", "encoder_output")
    assert check_protocol(model) == []
    items = model.items(model.features(images()))
    saliency = build_explainer("caption_guided").explain(model, items, tokens=QUERY)
    assert saliency.words == [["a", "big", "yellow", "triangle"]] * 2 and saliency.scores.shape[-1] == 16


def test_an_undownloadable_hub_id_stops_with_one_line_naming_the_offline_routes(tmp_path):
    command = [
        sys.executable,
        "-m",
        "capsal.cli.explain",
        "model=hf_captioner",
        "model.name_or_path=nlpconnect/vit-gpt2-image-captioning",
        f"input={tmp_path / 'photo.png'}",
        f"hydra.run.dir={tmp_path}",
    ]
    cache = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env={**_env(), **cache}, timeout=240)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("capsal-explain: error: model.name_or_path=nlpconnect")
    assert "save_pretrained" in lines[0] and "Hugging Face cache" in lines[0]


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def test_an_unknown_keep_stops_with_one_line_naming_the_choices(folders):
    with pytest.raises(UserError, match=r"model\.keep='middle' is unknown; use one of input, encoder_output, prefix"):
        HFCaptioner(str(folders["vit_gpt2"]), keep="middle")


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_a_checkpoint_records_the_class_path_configs_name_and_the_models_own_weights(folders, family):
    """What a saved checkpoint says must keep loading: the class under the path ``conf/model/hf_captioner.yaml``
    names, weights under the ``hf.`` keys of the ``transformers`` model, the sanity check's stages output first."""
    model = load(folders[family], family)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    target = compose_train("model=hf_captioner", "model.name_or_path=x").model._target_
    assert checkpoint["capsal"]["model_class"] == target == "capsal.models.hf.HFCaptioner"
    assert all(key.startswith("hf.") for key in checkpoint["state_dict"])
    options = checkpoint["hyper_parameters"]
    assert options["keep"] == HF_KEEP.get(family, ("input",))[0] and options["item_mode"] == "grid"
    stages = {"git": ["decoder", "projection", "encoder"], "blip2": ["decoder", "qformer", "encoder"]}
    stages.update({family: stages["git"] for family in IMAGE_TEXT})
    stages["florence2"] = ["decoder", "text_encoder", "projection", "encoder"]
    assert [name for name, _ in model.randomisation_stages()] == stages.get(family, ["decoder", "encoder"])


@pytest.mark.parametrize("name", ["caption_guided", "gradient"])
@pytest.mark.parametrize("family", HF_FAMILIES)
def test_a_foil_word_of_other_subword_tokens_is_contrasted_in_one_more_pass(folders, family, name):
    """ "red" is one token and its foil "yellow" two: the foil is scored in a spliced row after "a big", so word 2
    of the contrast equals the two sentences' own explanations subtracted (they share the words before it)."""
    model = load(folders[family], family).double()
    items = model.items(model.features(images().double()))
    explainer = build_explainer(name)
    fact = explainer.explain(model, items, tokens="a big red circle")
    foil = explainer.explain(model, items, tokens="a big yellow circle")
    contrast = explainer.explain(model, items, tokens="a big red circle", contrast="a big yellow circle")
    assert contrast.words == fact.words and contrast.foil_words == [["a", "big", "yellow", "circle"]] * 2
    torch.testing.assert_close(contrast.scores[:, 2], fact.scores[:, 2] - foil.scores[:, 2], atol=1e-8, rtol=0)
    assert contrast.scores[:, :2].abs().max() == 0


# ---- Florence-2: the projected image tokens, then the <CAPTION> prompt, are BART's encoder input -----------------
FLORENCE_KEEP = HF_KEEP["florence2"]


def florence_inputs(model, pixels: torch.Tensor, keep: str, hidden: list[int]) -> dict:
    """What ``Florence2ForConditionalGeneration``'s own forward and generate take for capsal's state: the
    processor's input ids for ``<CAPTION>`` with the pixels, under an encoder attention mask hiding the summary token
    and the image token of item ``hidden[b]`` in row b (-1: none) (``keep=prefix``); or the model's own encoder
    output, its decoder reading only the grid tokens but ``hidden``'s (``keep=encoder_output``)."""
    import transformers
    from transformers.modeling_outputs import BaseModelOutput

    processor = transformers.Florence2Processor.from_pretrained(model.hparams.name_or_path)
    inputs = processor(text=["<CAPTION>"] * 2, images=pixels[:, 0], do_rescale=False, return_tensors="pt")
    ids, values = inputs["input_ids"], inputs["pixel_values"].double()
    (image,) = torch.nonzero(ids[0] == model.hf.config.image_token_id).T  # the summary token, then the grid
    grid = torch.zeros_like(ids, dtype=torch.bool)
    grid[:, image[1:]] = True
    for row, item in enumerate(hidden):
        if item >= 0:
            grid[row, image[1 + item]] = False
    if keep == "prefix":
        seen = grid | (ids != model.hf.config.image_token_id)  # the prompt stays
        return {"input_ids": ids, "pixel_values": values, "attention_mask": seen.long()}
    start = torch.full((2, 1), model.hf.config.text_config.decoder_start_token_id)
    encoder = model.hf(input_ids=ids, pixel_values=values, decoder_input_ids=start).encoder_last_hidden_state
    return {"encoder_outputs": BaseModelOutput(last_hidden_state=encoder), "attention_mask": grid.long()}


def florence_logprobs(model, inputs: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Florence-2's own log-probabilities after ``tokens`` (rows from its decoder start token) on ``inputs``."""
    return torch.log_softmax(model.hf(**inputs, decoder_input_ids=tokens).logits, dim=-1)


@pytest.mark.parametrize("keep", FLORENCE_KEEP)
def test_florence2_with_every_item_or_one_hidden_is_its_own_forward_under_that_mask(folders, keep):
    """Every item, then item 5 (row 0) and item 9 (row 1) hidden: capsal's log-probabilities equal Florence-2's own
    forward with those image tokens (and the summary token) masked, the prompt seen (``keep=prefix``: hidden tokens
    move no position), or its own encoder output read at the other grid tokens (``keep=encoder_output``)."""
    model = load(folders["florence2"], "florence2", keep).double()
    pixels = images().double()
    items = model.items(model.features(pixels))
    tokens = torch.tensor([model.vocab.encode(QUERY)[:-1]] * 2)
    every = model.token_logprobs(model.encode(items), tokens)
    torch.testing.assert_close(every, florence_logprobs(model, florence_inputs(model, pixels, keep, [-1, -1]), tokens))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 5], mask[1, 9] = False, False
    hidden = model.token_logprobs(model.encode(items, mask), tokens)
    theirs = florence_logprobs(model, florence_inputs(model, pixels, keep, [5, 9]), tokens)
    torch.testing.assert_close(hidden, theirs)
    assert not torch.allclose(hidden, every)


@pytest.mark.parametrize("keep", FLORENCE_KEEP)
def test_florence2_generates_its_own_greedy_caption_after_its_decoder_start_and_bos(folders, keep):
    model = load(folders["florence2"], "florence2", keep).double()
    pixels = images().double()
    ours = model.generate(model.items(model.features(pixels)), max_len=6)
    inputs = florence_inputs(model, pixels, keep, [-1, -1])
    theirs = model.hf.generate(**inputs, max_new_tokens=7, num_beams=1, do_sample=False)  # bos is forced
    start, bos = model.hf.config.text_config.decoder_start_token_id, model.vocab.bos_id
    assert theirs[:, :2].tolist() == [[start, bos]] * 2 and model.vocab.prefix == [start, bos]
    assert ours.tolist() == theirs[:, : ours.shape[1]].tolist()


@pytest.mark.parametrize("keep", FLORENCE_KEEP)
def test_florence2_with_no_item_reads_the_prompt_alone_or_nothing(folders, keep):
    """``keep=prefix``: every image token hidden, the encoder on the prompt alone, as Florence-2's own forward under
    that mask; ``keep=encoder_output``: the decoder reads nothing, and a masked item's values reach no word."""
    model = load(folders["florence2"], "florence2", keep).double()
    tokens = torch.tensor([model.vocab.encode(QUERY)[:-1]] * 2)
    alone = check_no_item(model, torch.randn(2, 3, model.feature_size, dtype=torch.float64), tokens)
    if keep == "prefix":
        inputs = florence_inputs(model, images().double(), keep, [-1, -1])
        inputs["attention_mask"] = (inputs["input_ids"] != model.hf.config.image_token_id).long()
        torch.testing.assert_close(alone, florence_logprobs(model, inputs, tokens))


def test_florence2_reads_its_caption_prompt_from_its_processor_and_never_explains_it(folders):
    """The folder's ``Florence2Processor`` loads by path; its ``<CAPTION>`` text is the encoder's prompt, after the
    image tokens; the decoder's rows start at bos, so the words are the caption's alone."""
    import transformers

    from capsal.models.hf import load_parts

    model = load(folders["florence2"], "florence2", "prefix")
    assert isinstance(load_parts(str(folders["florence2"]))[2], transformers.Florence2Processor)
    ids = model.family.task_ids
    image = ids == model.hf.config.image_token_id
    assert int(image.sum()) == 17 and bool(image[:17].all())  # the summary token and the 4 x 4 grid, first
    assert model.tokenizer.decode(ids[~image]) == "<s>What does the image describe?</s>"
    assert model.vocab.prefix == [model.hf.config.text_config.decoder_start_token_id, model.vocab.bos_id]
    items = model.items(model.features(images()))
    saliency = build_explainer("caption_guided").explain(model, items, tokens=QUERY)
    assert saliency.words == [["a", "big", "yellow", "triangle"]] * 2
    caption = build_explainer("caption_guided").explain(model, items)
    assert all("describe" not in words for words in caption.words)


@pytest.mark.parametrize("keep", FLORENCE_KEEP)
def test_florence2_soft_attention_is_its_last_decoder_layers_cross_attention_on_the_grid_tokens(folders, keep):
    """Item 5 (row 0) and 9 (row 1) hidden: the weights on each item are Florence-2's own (eager attention, the mean
    over heads of its last layer) at that item's column, zero for the hidden ones; the prompt's share is left out."""
    model = load(folders["florence2"], "florence2", keep).double()
    pixels = images().double()
    tokens = torch.tensor([model.vocab.encode(QUERY)[:-1]] * 2)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 5], mask[1, 9] = False, False
    ours = model.attention(model.encode(model.items(model.features(pixels)), mask), tokens)
    inputs = florence_inputs(model, pixels, keep, [5, 9])
    model.hf.set_attn_implementation("eager")
    cross = model.hf(**inputs, decoder_input_ids=tokens, output_attentions=True).cross_attentions[-1].mean(dim=1)
    if keep == "prefix":  # the summary token, then the grid
        (image,) = torch.nonzero(inputs["input_ids"][0] == model.hf.config.image_token_id).T
        cross = cross[..., image[1:]]
    else:
        cross = cross[..., inputs["attention_mask"][0].bool() | inputs["attention_mask"][1].bool()]
    torch.testing.assert_close(ours, cross)
    assert ours[0, :, 5].abs().max() == 0 and ours[1, :, 9].abs().max() == 0
    assert bool((ours.sum(dim=-1) < 1 - 1e-3).all()) == (keep == "prefix")  # the prompt's share, left out


def test_florence2_attention_trace_under_keep_prefix_is_its_own_maps_without_the_summary_token(folders):
    """Every map of the trace equals Florence-2's own (eager) under the mask hiding the summary token and item 5
    (row 0) / 9 (row 1): BART's encoder self-attention (the rows of the tokens it sees) and the decoder's
    cross-attention over the grid tokens then the prompt (the hidden summary token's row and column dropped), the
    decoder's self-attention as it is."""
    model = load(folders["florence2"], "florence2", "prefix").double()
    pixels = images().double()
    tokens = torch.tensor([model.vocab.encode(QUERY)[:-1]] * 2)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 5], mask[1, 9] = False, False
    trace = model.attention_trace(model.items(model.features(pixels)), mask, tokens)
    model.hf.set_attn_implementation("eager")
    inputs = florence_inputs(model, pixels, "prefix", [5, 9])
    assert bool((inputs["input_ids"][:, 0] == model.hf.config.image_token_id).all())  # the summary token is first
    theirs = model.hf(**inputs, decoder_input_ids=tokens, output_attentions=True)
    assert len(trace.encoder) == len(theirs.encoder_attentions) == 2 and len(trace.cross) == 2
    seen = torch.ones(2, trace.item.shape[1], dtype=torch.bool)
    seen[0, 5], seen[1, 9] = False, False  # a hidden token's own row reads the zero vector capsal gives it
    for ours, own in zip(trace.encoder, theirs.encoder_attentions, strict=True):
        for row in range(2):
            torch.testing.assert_close(ours[row][:, seen[row]], own[row, :, 1:, 1:][:, seen[row]])
    for ours, own in zip(trace.decoder, theirs.decoder_attentions, strict=True):
        torch.testing.assert_close(ours, own)
    for ours, own in zip(trace.cross, theirs.cross_attentions, strict=True):
        torch.testing.assert_close(ours, own[..., 1:])


def test_florence2_refuses_keep_input_naming_its_modes(folders):
    with pytest.raises(UserError, match=r"DaViT tower .* use model\.keep=prefix or model\.keep=encoder_output$"):
        HFCaptioner(str(folders["florence2"]), keep="input")


def hand_built_mask(model, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``(B, 1, n, n)`` additive mask: causal (PaliGemma: bidirectional over its prefix), image tokens whose
    ``visible`` is False seen by no other token (each still sees itself, so no row is empty)."""
    n = tokens.shape[1]
    query, key = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = key <= query
    if model.hf.config.model_type == "paligemma":
        prefix = len(model.vocab.prefix)
        allowed = allowed | ((query < prefix) & (key < prefix))
    seen = torch.ones_like(tokens, dtype=torch.bool)
    seen[tokens == model.hf.config.image_token_id] = visible.flatten()
    allowed = (allowed[None] & seen[:, None, :]) | (query == key)[None]
    bias = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)
    return bias[:, None]


@pytest.mark.parametrize("family", IMAGE_TEXT)
def test_keep_prefix_hides_image_tokens_as_the_models_own_forward_under_a_hand_built_mask(folders, family):
    """Row 0 keeps patch 5, row 1 no patch: the words' log-probabilities are the model's own forward on the whole
    image under a hand-built mask that hides the other image tokens, at unmoved positions; a patch encoded alone at
    its position gives the same, and the masked items' values reach nothing."""
    model = load(folders[family], family, "prefix").double()
    pixels = images().double()
    items = model.items(model.features(pixels))
    tokens = torch.tensor([model.vocab.encode(QUERY)[:-1]] * 2)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 5] = True
    ours = model.token_logprobs(model.encode(items, mask), tokens)
    start = 1 if family == "paligemma" else 0  # PaliGemma numbers its positions from 1
    positions = torch.arange(tokens.shape[1])[None].expand(2, -1) + start
    own = model.hf(
        input_ids=tokens,
        pixel_values=model.pixel_values(pixels[:, 0]),
        attention_mask=hand_built_mask(model, tokens, mask),
        position_ids=positions,
        **prefix_kinds(model, tokens),
    ).logits
    words = slice(len(model.vocab.prefix) - 1, None)  # the last prefix token predicts the first word
    torch.testing.assert_close(ours[:, words], torch.log_softmax(own, dim=-1)[:, words], atol=1e-10, rtol=0)
    alone = model.token_logprobs(model.encode(items[:1, 5:6], None, torch.tensor([[5]])), tokens[:1])
    torch.testing.assert_close(ours[:1], alone, atol=1e-10, rtol=0)
    assert not torch.allclose(ours[0], ours[1])
    torch.testing.assert_close(check_no_item(model, items, tokens), ours[1:].expand(2, -1, -1), atol=1e-10, rtol=0)


@pytest.mark.parametrize(("family", "keep"), [case for case in HF_CASES if case[0] in IMAGE_TEXT])
def test_generate_with_hidden_image_tokens_is_greedy_decoding_at_unmoved_positions(folders, family, keep):
    """``generate`` with one patch kept per row gives the tokens teacher forcing ranks first at every step: its
    positions are those of ``decode`` (which the hand-built mask checks), not counted from the attention mask."""
    model = load(folders[family], family, keep).double()
    items = model.items(model.features(images().double()))
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 5], mask[1, 10] = True, True
    rows = model.generate(items, mask, max_len=6)
    prefix = len(model.vocab.prefix)
    assert rows.shape[1] > prefix and bool((rows[:, :prefix] == torch.tensor(model.vocab.prefix)).all())
    logprobs = model.token_logprobs(model.encode(items, mask), rows[:, :-1])
    best = logprobs.argmax(dim=-1)[:, prefix - 1 :]
    generated = rows[:, prefix:]
    real = generated != model.vocab.pad_id
    assert torch.equal(best[real], generated[real])


@pytest.mark.parametrize(("family", "keep"), [case for case in HF_CASES if case[0] in IMAGE_TEXT])
def test_an_image_text_family_with_no_item_is_its_prompt_and_words_at_their_places(folders, family, keep):
    """No item hides every image token: the model's own forward with all of them masked by hand, whatever the
    items' values."""
    model = load(folders[family], family, keep).double()
    tokens = torch.tensor([model.vocab.encode(QUERY)[:-1]] * 2)
    ours = check_no_item(model, torch.randn(2, 3, model.feature_size, dtype=torch.float64), tokens)
    start = 1 if family == "paligemma" else 0
    own = model.hf(
        input_ids=tokens,
        pixel_values=model.pixel_values(images().double()[:, 0]),
        attention_mask=hand_built_mask(model, tokens, torch.zeros(2, 16, dtype=torch.bool)),
        position_ids=torch.arange(tokens.shape[1])[None].expand(2, -1) + start,
        **prefix_kinds(model, tokens),
    ).logits
    words = slice(len(model.vocab.prefix) - 1, None)
    torch.testing.assert_close(ours[:, words], torch.log_softmax(own, dim=-1)[:, words], atol=1e-10, rtol=0)


@pytest.mark.parametrize("family", IMAGE_TEXT)
def test_an_image_text_checkpoint_loads_alone_with_its_processors_prefix_and_captions(folders, family, tmp_path):
    """The checkpoint carries the whole processor (image token, chat template): loaded without the folder, the
    prefix and the captions are the same."""
    model = load(folders[family], family)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "model.ckpt")
    again = HFCaptioner.load_from_checkpoint(tmp_path / "model.ckpt").eval()
    assert again.vocab.prefix == model.vocab.prefix
    items = model.items(model.features(images()))
    torch.testing.assert_close(again.generate(items, max_len=6), model.generate(items, max_len=6), rtol=0, atol=0)


@pytest.fixture(scope="module", params=["idefics3_tiles", "smolvlm_tiles"])
def tiles(tmp_path_factory, request) -> Path:
    """A tiny Idefics3 (or SmolVLM) whose processor splits a 64-pixel square into 2 x 2 tiles of 32 and adds a
    thumbnail."""
    return save_tiny_hf(tmp_path_factory.mktemp("hf_tiles") / request.param, request.param)


@pytest.mark.parametrize("keep", ["input", "prefix"])
def test_idefics3_tiles_give_items_for_every_tile_and_the_thumbnail_as_the_models_own_pass(tiles, keep):
    """20 items (4 tiles and the thumbnail, 2 x 2 shuffled tokens each): every item is the model's own features,
    logits and caption; the batched caption-guided losses are one item at a time."""
    model = load(tiles, "idefics3", keep).double()
    pixels = images().double()
    items = model.items(model.features(pixels))
    assert items.shape[1] == 20 and model.item_layout((1, 1, 20)).grid_size == (4, 4)
    tokens = torch.tensor([model.vocab.encode(QUERY)] * 2)
    values = model.pixel_values(pixels[:, 0])
    assert values.shape[:2] == (1, 10)  # both images' 4 tiles and thumbnail, as one sample's crops
    state = model.encode(items)
    features = torch.cat(list(model.hf.get_image_features(values).pooler_output))
    torch.testing.assert_close(state["memory"], features.reshape(state["memory"].shape))
    theirs = model.hf(input_ids=tokens, pixel_values=values).logits
    torch.testing.assert_close(model.token_logits(model.encode(items), tokens), theirs)
    prefix = torch.tensor([model.vocab.prefix] * 2)
    own = model.hf.generate(input_ids=prefix, pixel_values=values, max_new_tokens=6, do_sample=False)
    assert torch.equal(model.generate(items, max_len=6)[:, prefix.shape[1] :], own[:, prefix.shape[1] :])
    saliency = build_explainer("caption_guided").explain(model, items, tokens=QUERY)
    expected = reference_losses(model, items, saliency.tokens)
    torch.testing.assert_close(saliency.losses[:, :4], expected[:, :4], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("row", "column"), [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_a_map_on_one_tiles_items_lands_in_that_tiles_pixels_and_the_thumbnails_in_its_quarter(tiles, row, column):
    """Tile (row, column)'s 4 items alone give a map whose peak lies in the tile's pixel box; the thumbnail's token
    (row, column) covers the same quarter of the image (2 x 2 tiles, a 2 x 2 thumbnail)."""
    from capsal.explainers.saliency import Saliency
    from capsal.maxima import peak_location

    model = load(tiles, "idefics3")
    layout = model.item_layout((1, 1, 20))
    height, width = 90, 150
    for chosen in (list(range(4 * (2 * row + column), 4 * (2 * row + column) + 4)), [16 + 2 * row + column]):
        values = torch.zeros(20)
        values[chosen] = 1.0
        saliency = Saliency([["x"]], torch.ones(1, 1, dtype=torch.bool), values[None, None], torch.ones(1, 20), layout)
        heat = saliency.to_image_size(height, width, values[None])[0]
        x, y = peak_location(heat)
        assert column * width / 2 <= x < (column + 1) * width / 2 and row * height / 2 <= y < (row + 1) * height / 2
        assert heat.amax() == 0.5  # a cell is the mean of its tile's token and the thumbnail's over it


@pytest.mark.parametrize("keep", ["input", "prefix"])
def test_llava_with_its_class_token_as_an_image_token_and_two_feature_layers(tmp_path, keep):
    """``vision_feature_select_strategy="full"``: 17 image tokens, the class token's first; with every item the
    model's own image features (two layers side by side) and logits. ``keep=input`` shows the class token beside the
    kept patches, ``keep=prefix`` hides it (it summarises the whole image)."""
    model = load(save_tiny_hf(tmp_path / "llava_full", "llava_full"), "llava", keep).double()
    assert model.feature_size == (32 if keep == "input" else 64)
    pixels = images().double()
    items = model.items(model.features(pixels))
    state = model.encode(items)
    values = model.pixel_values(pixels[:, 0])
    own = torch.stack(list(model.hf.get_image_features(values).pooler_output))
    assert state["memory"].shape[1] == 17 and state["item"][0, 0] == -1
    tokens = torch.tensor([model.vocab.encode(QUERY)] * 2)
    if keep == "input":
        torch.testing.assert_close(state["memory"], own)
        torch.testing.assert_close(
            model.token_logits(state, tokens), model.hf(input_ids=tokens, pixel_values=values).logits
        )
    else:
        torch.testing.assert_close(state["memory"][:, 1:], own[:, 1:])
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 3] = True
    assert model.encode(items, mask)["mask"][:, 0].tolist() == [keep == "input"] * 2


def test_llavas_padding_to_a_square_is_off_so_the_grid_covers_only_the_image(folders):
    """A 40 x 48 image, white on its left half, black on its right: resized whole, the processed image is white on
    its left columns and black on its right ones from the top row to the bottom (padding it to a square first would
    put rows of the padding colour above and below it)."""
    model = load(folders["llava"], "llava")
    pixels = torch.zeros(1, 3, 40, 48)
    pixels[..., :24] = 1.0
    values = model.pixel_values(pixels)[0]  # (3, 32, 32)
    left, right = values[:, :, :14], values[:, :, -14:]
    torch.testing.assert_close(left, values[:, :1, :1].expand_as(left), atol=1e-3, rtol=0)
    torch.testing.assert_close(right, values[:, :1, -1:].expand_as(right), atol=1e-3, rtol=0)
    assert bool((values[:, 0, 0] > values[:, 0, -1]).all())


def test_a_processor_needing_a_missing_package_stops_with_one_line_naming_it(folders, monkeypatch):
    """SmolVLM's own processor needs num2words: without it, one line says so instead of a traceback."""
    import transformers

    def missing(*args, **kwargs):
        raise ImportError("Package `num2words` is required to run SmolVLM processor. Install it with `pip install x`.")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", missing)
    with pytest.raises(UserError, match=r"its processor cannot load: Package `num2words` is required"):
        HFCaptioner(str(folders["llava"]))


@pytest.mark.parametrize("family", [*IMAGE_TEXT, "qwen2_vl", "blip2"])
def test_generate_never_emits_an_image_placeholder_even_where_the_model_favours_it(folders, family):
    """The output head pushed toward the image token (+50 on its logit, as a briefly fine-tuned model may): the
    captions hold no image placeholder, so the model's forward reads them as words (one among the words would be one
    more image token) and the explainers take them."""
    model = load(folders[family], family)
    image = model.family.never_generated()[0]

    def favour(module, args, logits):
        return logits + 50.0 * torch.nn.functional.one_hot(torch.tensor(image), logits.shape[-1]).to(logits)

    handle = model.hf.get_output_embeddings().register_forward_hook(favour)
    try:
        items = model.items(model.features(images()))
        rows = model.generate(items, max_len=5)
        body = rows[:, len(model.vocab.prefix) :]
        assert body.shape[1] > 0 and not bool((body == image).any())
        saliency = build_explainer("caption_guided").explain(model, items, tokens=rows)
        assert torch.isfinite(saliency.scores[saliency.word_mask]).all()
    finally:
        handle.remove()
    handle = model.hf.get_output_embeddings().register_forward_hook(favour)
    model.family.never_generated = lambda: []  # without the suppression the favoured placeholder is generated
    try:
        assert bool((model.generate(items, max_len=5)[:, len(model.vocab.prefix) :] == image).any())
    finally:
        handle.remove()

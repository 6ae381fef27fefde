"""S2VT: the protocol, teacher forcing vs step decoding, greedy vs beam search, backbones."""

from __future__ import annotations

import itertools

import pytest
import torch
from tiny import CAPTIONER_SIZES, CAPTIONER_WORDS

from capsal import check_protocol
from capsal.errors import UserError
from capsal.models.backbones import SmallCNN, TorchvisionBackbone
from capsal.models.s2vt import S2VT

WORDS, TINY = CAPTIONER_WORDS, CAPTIONER_SIZES


def _model(encoder: str = "lstm", **kwargs) -> S2VT:
    torch.manual_seed(0)
    return S2VT(WORDS, encoder=encoder, **{**TINY, **kwargs}).eval()


def test_s2vt_implements_the_protocol_and_a_plain_object_does_not():
    assert check_protocol(_model()) == []
    problems = check_protocol(object())
    assert "missing method features(pixels) -> grid" in problems
    assert any("vocab" in p for p in problems)


def test_image_items_are_the_grid_read_row_major_and_video_items_are_frame_means():
    model = _model()
    grid = torch.randn(2, 1, 3, 4, 5)
    items = model.items(grid)
    assert items.shape == (2, 12, 5)
    assert torch.equal(items[1, 4 + 2], grid[1, 0, 1, 2])  # row 1, column 2
    video = torch.randn(2, 6, 3, 4, 5)
    assert torch.allclose(model.items(video), video.mean(dim=(2, 3)))
    assert model.features(torch.rand(2, 6, 3, 16, 16)).shape == (2, 6, 4, 4, 8)


def test_lstm_encoder_ignores_padded_items_and_mean_encoder_is_order_free():
    model = _model("lstm")
    items = torch.randn(1, 4, model.feature_size)
    padded = torch.cat([items, torch.randn(1, 3, model.feature_size)], dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    torch.testing.assert_close(model.encode(padded, mask)["z"], model.encode(items)["z"])
    holes = torch.cat([items[:, :2], torch.randn(1, 1, model.feature_size), items[:, 2:]], dim=1)
    hole_mask = torch.tensor([[True, True, False, True, True]])  # an item left out in the middle
    torch.testing.assert_close(model.encode(holes, hole_mask)["z"], model.encode(items)["z"])
    mean = _model("mean")
    shuffled = items[:, torch.tensor([2, 0, 3, 1])]
    torch.testing.assert_close(mean.encode(shuffled)["z"], mean.encode(items)["z"])


def _sequence_logprob(model: S2VT, items: torch.Tensor, tokens: torch.Tensor) -> float:
    """log p(tokens[1:] | items), stopping after eos."""
    logprobs = model.token_logprobs(model.encode(items), tokens[:, :-1])[0]
    total = 0.0
    for t, token in enumerate(tokens[0, 1:].tolist()):
        if token == model.vocab.pad_id:
            break
        total += float(logprobs[t, token])
    return total


def test_beam_search_with_a_wide_beam_finds_the_most_likely_sentence():
    model = _model()
    items = torch.randn(1, 3, model.feature_size)
    max_len, vocab = 3, model.vocab
    best, best_score = None, float("-inf")
    for length in range(1, max_len + 1):  # every sentence of up to max_len tokens, ending in eos or cut at max_len
        for body in itertools.product(range(len(vocab)), repeat=length):
            if any(t == vocab.eos_id for t in body[:-1]) or any(t in (vocab.pad_id, vocab.bos_id) for t in body):
                continue
            if length < max_len and body[-1] != vocab.eos_id:
                continue
            tokens = torch.tensor([[vocab.bos_id, *body]])
            score = _sequence_logprob(model, items, tokens)
            if score > best_score:
                best, best_score = tokens, score
    found = model.generate(items, beam_size=len(vocab) ** 2, max_len=max_len)
    assert found[0, : best.shape[1]].tolist() == best[0].tolist()
    greedy = model.generate(items, beam_size=1, max_len=max_len)
    assert _sequence_logprob(model, items, greedy) <= best_score + 1e-6


def test_small_cnn_grid_has_one_cell_per_stride():
    cnn = SmallCNN(channels=[4, 8, 8])
    assert cnn(torch.rand(2, 3, 64, 64)).shape == (2, 8, 8, 8)


def _cells_moved_by_changing_cell_1_2(cnn: SmallCNN) -> set[tuple[int, int]]:
    pixels = torch.rand(1, 3, 64, 64)
    changed = pixels.clone()
    changed[..., 8:16, 16:24] = 0.0  # the pixels of cell (1, 2)
    with torch.no_grad():
        moved = (cnn.eval()(pixels) - cnn(changed)).abs().sum(dim=(0, 1)) > 0
    return {(int(a), int(b)) for a, b in moved.nonzero().tolist()}


@pytest.mark.parametrize("convs_per_stage", [1, 2])
def test_a_cell_bound_cnn_cell_sees_only_its_own_pixels(convs_per_stage):
    torch.manual_seed(0)
    cnn = SmallCNN(channels=[4, 8, 8], convs_per_stage=convs_per_stage, cell_bound=True)
    assert _cells_moved_by_changing_cell_1_2(cnn) == {(1, 2)}


def test_a_3x3_cnn_cell_also_sees_its_neighbours():
    torch.manual_seed(0)
    cnn = SmallCNN(channels=[4, 8, 8])
    assert _cells_moved_by_changing_cell_1_2(cnn) == {(a, b) for a in (0, 1, 2) for b in (1, 2, 3)}


@pytest.mark.parametrize(("name", "size", "grid"), [("inception_v3", 299, 8), ("resnet50", 224, 7)])
def test_frozen_torchvision_backbones_give_the_papers_grids_offline(name, size, grid):
    backbone = TorchvisionBackbone(name=name, weights=None)
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training  # frozen backbones keep ImageNet statistics
    with torch.no_grad():
        out = backbone(torch.rand(1, 3, 50, 80))  # any size: resized to the backbone's input
    assert out.shape == (1, 2048, grid, grid)


def test_backbone_weights_from_a_local_file_and_a_clear_error_for_a_missing_one(tmp_path):
    source = TorchvisionBackbone(name="resnet50", weights=None)
    from torchvision.models import resnet50

    classifier = resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(classifier.state_dict(), path)
    loaded = TorchvisionBackbone(name="resnet50", weights=str(path))
    torch.testing.assert_close(loaded.body.conv1.weight, classifier.conv1.weight)
    assert not torch.equal(source.body.conv1.weight, classifier.conv1.weight)
    with pytest.raises(UserError, match="does not exist"):
        TorchvisionBackbone(name="resnet50", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="unknown backbone"):
        TorchvisionBackbone(name="vgg0")


@pytest.mark.parametrize("encoder", ["lstm", "mean"])
def test_input_projection_size_widens_the_projection_and_its_default_keeps_the_old_shapes(encoder):
    backbone = {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4, 5]}
    words = ["a", "red", "circle"]
    default = S2VT(words, encoder=encoder, hidden_size=12, embed_size=6, backbone=backbone)
    same = S2VT(words, encoder=encoder, hidden_size=12, embed_size=6, backbone=backbone, input_projection_size=12)
    shapes = {k: v.shape for k, v in default.state_dict().items()}
    assert shapes == {k: v.shape for k, v in same.state_dict().items()}
    assert "input_projection_size" not in default.hparams  # checkpoints written before the option load unchanged
    wide = S2VT(words, encoder=encoder, hidden_size=12, embed_size=6, backbone=backbone, input_projection_size=20)
    assert wide.item_projection[0].out_features == 20
    items = torch.randn(2, 3, wide.feature_size)
    tokens = torch.tensor([wide.vocab.encode("a red circle")] * 2)
    assert wide.token_logprobs(wide.encode(items), tokens[:, :-1]).shape == (2, 4, len(wide.vocab))


def test_checkpoint_backbone_is_the_trained_encoder_frozen(image_checkpoint, tmp_path):
    from capsal.checkpoints import load_captioner
    from capsal.models.backbones import CheckpointBackbone

    trained = load_captioner(image_checkpoint).backbone
    backbone = CheckpointBackbone(str(image_checkpoint))
    pixels = torch.rand(2, 3, 64, 64)
    backbone.train()  # a frozen encoder keeps its batch-norm statistics
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    torch.testing.assert_close(backbone(pixels), trained(pixels))
    assert backbone.out_channels == trained.out_channels
    not_capsal = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, not_capsal)
    with pytest.raises(UserError, match="is not a capsal checkpoint with a backbone"):
        CheckpointBackbone(str(not_capsal))
    with pytest.raises(UserError, match=r"does not exist; pass backbone\.checkpoint="):
        CheckpointBackbone(str(tmp_path / "missing.ckpt"))


@pytest.mark.parametrize("crop", ["resize", None])
def test_a_model_recorded_with_the_removed_whole_image_crop_still_builds(crop):
    """Checkpoints saved before ``datamodule.protocol`` record ``crop: resize`` in their backbone config: the
    whole-image framing, dropped when the model is rebuilt (the backbone no longer takes the key)."""
    backbone = {"_target_": "capsal.models.backbones.TorchvisionBackbone", "name": "resnet50", "crop": crop}
    model = S2VT(["a", "red", "circle"], backbone=backbone, caption_metrics=[])
    assert isinstance(model.backbone, TorchvisionBackbone)
    assert model.hparams.backbone["crop"] == crop  # the checkpoint's own record is kept as it was


def test_a_model_recorded_with_another_crop_is_refused():
    backbone = {"_target_": "capsal.models.backbones.TorchvisionBackbone", "name": "resnet50", "crop": "center"}
    with pytest.raises(
        UserError, match=r"^model\.backbone\.crop='center': this model was trained on images its backbone"
    ):
        S2VT(["a", "red", "circle"], backbone=backbone, caption_metrics=[])

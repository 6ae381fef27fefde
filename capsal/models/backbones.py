"""Visual encoders: pixels ``(N, 3, H, W)`` in [0, 1] -> descriptor grids ``(N, d, h, w)``.

A small CNN trained end to end serves the synthetic data; frozen torchvision backbones serve real datasets
(InceptionV3 ``mixed_10`` as in the paper, ResNet-50 ``layer4``); ``CheckpointBackbone`` freezes the visual encoder
of a trained capsal checkpoint (the video demo's backbone, pre-trained by captioning ``shapes_image``).
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from capsal.constraints import PositiveInt
from capsal.errors import UserError
from capsal.safe_load import check_targets, load_checkpoint

log = logging.getLogger("capsal")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SmallCNN(nn.Module):
    """(Conv-BN-ReLU) x ``convs_per_stage`` then MaxPool per stage; each stage halves the grid (64x64 pixels ->
    8x8 grid with three stages). Fewer convolutions keep each cell's receptive field close to its own cell.

    ``cell_bound``: each stage is a 2x2 convolution of stride 2 (then ``convs_per_stage - 1`` 1x1 ones), so a grid
    cell sees its own pixels and nothing else (8x8 with three stages). With 3x3 convolutions a cell also sees the
    edge of an object in the next cell (22 px for 8 px cells with one convolution per stage), and alone it can
    explain a word better than the object's own cells (docs/studies/training-budget.md)."""

    frozen = False

    def __init__(
        self,
        channels: Annotated[list[PositiveInt], Field(min_length=1)] = (32, 64, 128),  # type: ignore[assignment]
        in_channels: PositiveInt = 3,
        convs_per_stage: PositiveInt = 1,
        cell_bound: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            for k in range(convs_per_stage):
                if not cell_bound:
                    conv = nn.Conv2d(previous, width, 3, padding=1, bias=False)
                else:  # a 2x2 patch of the previous grid, then 1x1 convolutions
                    conv = nn.Conv2d(previous, width, 1 if k else 2, stride=1 if k else 2, bias=False)
                layers += [conv, nn.BatchNorm2d(width), nn.ReLU()]
                previous = width
            if not cell_bound:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.out_channels = previous
        self.stride = 2 ** len(channels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body((pixels - 0.5) / 0.25)


_TORCHVISION_GRIDS = {
    # name: (constructor name, node returning the grid, default input size, channels)
    "inception_v3": ("inception_v3", "Mixed_7c", 299, 2048),
    "resnet50": ("resnet50", "layer4", 224, 2048),
}


class TorchvisionBackbone(nn.Module):
    """A frozen torchvision classifier cut at its last convolutional grid.

    ``weights``: ``None`` (random, works offline), a torchvision weights name such as ``"DEFAULT"`` (read from the
    torch hub cache, ``$TORCH_HOME/hub/checkpoints``, downloaded there when missing), or a local ``.pth`` state dict.
    Frames are resized to ``input_size`` x ``input_size``; which part of an image they show (the whole image, or its
    central square) is the datamodule's ``protocol``, so training, extraction and scoring see the same pixels.
    """

    def __init__(
        self,
        name: Literal["inception_v3", "resnet50"] = "inception_v3",
        weights: str | None = None,
        frozen: bool = True,
        input_size: PositiveInt | None = None,
    ):
        super().__init__()
        from torchvision import models
        from torchvision.models.feature_extraction import create_feature_extractor

        if name not in _TORCHVISION_GRIDS:
            raise UserError(f"unknown backbone '{name}'; choose one of {sorted(_TORCHVISION_GRIDS)}")
        constructor, node, default_size, channels = _TORCHVISION_GRIDS[name]
        kwargs = {"init_weights": False, "aux_logits": True} if name == "inception_v3" else {}
        classifier = getattr(models, constructor)(weights=None, **kwargs)
        if weights is not None:
            classifier.load_state_dict(_load_weights(name, weights))
        self.body = create_feature_extractor(classifier, return_nodes={node: "grid"})
        self.name, self.weights = name, weights
        self.input_size = input_size or default_size
        self.out_channels = channels
        self.frozen = frozen
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> TorchvisionBackbone:
        """A frozen backbone stays in eval mode (its BatchNorm statistics are ImageNet's)."""
        return super().train(mode and not self.frozen)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = self._resize(pixels)
        return self.body((pixels - self.mean) / self.std)["grid"]

    def _resize(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        return F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)


_REBUILDING: set[Path] = set()  # the checkpoints whose backbones are being rebuilt right now (a cycle stops)


class CheckpointBackbone(nn.Module):
    """The visual encoder of a trained capsal checkpoint, frozen: its grids are features whose every cell was
    trained to mean something (an image captioner reads the cells one by one), as an ImageNet CNN's are.

    ``checkpoint``: a ``.ckpt`` that ``capsal-train`` saved; the encoder is rebuilt from the backbone config recorded
    in it and gets its weights. Models built on it record the path, so that file must stay where it is (as a
    torchvision backbone needs its weights file in the hub cache).
    """

    def __init__(self, checkpoint: str, frozen: bool = True):
        super().__init__()
        from hydra.utils import instantiate

        self.checkpoint = str(checkpoint)
        path = Path(checkpoint).expanduser().resolve()
        if path in _REBUILDING:  # its stored backbone leads back to it: rebuilding would never end
            raise UserError(
                f"backbone checkpoint {path} has itself as its backbone's checkpoint (directly or through others); "
                f"pass backbone.checkpoint= a capsal-train run whose backbone is a network, not this file"
            )
        _REBUILDING.add(path)
        try:
            config, weights = _checkpoint_backbone(path)
            self.body = instantiate(config)
        finally:
            _REBUILDING.discard(path)
        self.body.load_state_dict(weights)
        self.out_channels = int(self.body.out_channels)
        self.stride = getattr(self.body, "stride", None)
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> CheckpointBackbone:
        """A frozen encoder stays in eval mode (its batch-norm statistics are the pre-training's)."""
        return super().train(mode and not self.frozen)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body(pixels)


def _checkpoint_backbone(path: Path) -> tuple[dict, dict]:
    """The backbone config and weights a capsal checkpoint holds; one line when ``path`` holds none."""
    if not path.is_file():
        raise UserError(
            f"backbone checkpoint {path} does not exist; pass backbone.checkpoint= the .ckpt of a capsal-train run"
        )
    saved = load_checkpoint(path)
    try:
        config = dict(saved["hyper_parameters"]["backbone"])
        state = saved["state_dict"]
    except Exception as error:  # a foreign file surfaces as many exception types
        raise UserError(
            f"{path} is not a capsal checkpoint with a backbone ({type(error).__name__}); pass the .ckpt of a "
            f"capsal-train run as backbone.checkpoint"
        ) from error
    check_targets(config, f"backbone checkpoint {path} (its backbone)")
    weights = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    return config, weights


def _load_weights(name: str, weights: str) -> dict:
    """A state dict from a local file or, for a torchvision weights name, from the torch hub cache.

    A registered name (``DEFAULT``, ``IMAGENET1K_V1``...) is read from ``torch.hub.get_dir()/checkpoints/<file of
    its url>`` (``$TORCH_HOME/hub/checkpoints``), as torchvision keeps it; a missing file is downloaded there first
    (:func:`download_weights`).
    """
    path = Path(weights).expanduser()
    if path.suffix in (".pth", ".pt") or path.exists():
        if not path.exists():
            raise UserError(f"backbone weights file {path} does not exist; pass an existing .pth file or weights=null")
        return _read_state_dict(path)
    cached = hub_weights_path(name, weights)
    if not cached.is_file():
        download_weights(name, weights, cached)
    return _read_state_dict(cached)


WEIGHTS_MIRROR = "CAPSAL_WEIGHTS_MIRROR"  # a base URL serving torchvision's weight files under their own names
WEIGHTS_CHECK_HASH = "CAPSAL_WEIGHTS_CHECK_HASH"  # 0: accept a file whose SHA-256 differs from the one in its name
CONNECT_TIMEOUT_S = 15.0  # no answer for this long (a firewalled machine): give up instead of hanging


def weights_url(url: str) -> str:
    """Where torchvision's weights file at ``url`` is fetched from: ``url``, or the same file name under
    ``$CAPSAL_WEIGHTS_MIRROR``."""
    mirror = os.environ.get(WEIGHTS_MIRROR, "").strip()
    return f"{mirror.rstrip('/')}/{url.rsplit('/', 1)[-1]}" if mirror else url


def download_weights(name: str, weights: str, cached: Path) -> None:
    """torchvision's file of ``weights`` into ``cached`` with torch hub's downloader (torchvision's own mechanism,
    progress bar on stderr; the SHA-256 prefix in the file name checked, as torchvision's model builders do). A
    failure (offline, no answer within :data:`CONNECT_TIMEOUT_S`, a wrong file) leaves nothing behind and stops in
    one line with the URL and the file to put."""
    url = weights_url(_weights_entry(name, weights).url)
    check = os.environ.get(WEIGHTS_CHECK_HASH, "1").strip() != "0"
    match = _HASH_IN_NAME.search(cached.name)
    hash_prefix = match.group(1) if match and check else None
    log.info("downloading %s weights %s from %s to %s", name, weights, url, cached)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(CONNECT_TIMEOUT_S)  # torch hub's urlopen takes no timeout of its own
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), hash_prefix, progress=True)
    except (OSError, RuntimeError, ValueError) as error:  # offline, timeout: OSError; a wrong hash: RuntimeError
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise UserError(
            f"ImageNet weights {weights!r} for {name} could not be downloaded from {url} ({reason}): download it to "
            f"{cached}, or set {WEIGHTS_MIRROR}=<a server with torchvision's files>, or pass "
            f"backbone.weights=/path/to.pth, or backbone.weights=null for random features"
        ) from error
    finally:
        socket.setdefaulttimeout(previous)


_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch hub's HASH_REGEX: resnet50-11ad3fa6.pth -> 11ad3fa6


def _weights_entry(name: str, weights: str):
    """torchvision's weights enum entry for ``weights`` ("DEFAULT", "IMAGENET1K_V1" or "ResNet50_Weights.DEFAULT")."""
    from torchvision.models import get_model_weights, get_weight

    try:
        if "." in weights:
            return get_weight(weights)
        return get_model_weights(name)[weights]
    except (KeyError, ValueError, AttributeError) as error:
        raise UserError(f"unknown weights '{weights}' for {name}; use DEFAULT, a local .pth file, or null") from error


def hub_weights_path(name: str, weights: str) -> Path:
    """Where torchvision keeps the file of registered ``weights`` of ``name``: ``<hub dir>/checkpoints/<file>``."""
    from urllib.parse import urlparse

    filename = Path(urlparse(_weights_entry(name, weights).url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _read_state_dict(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file surfaces as many exception types
        raise UserError(
            f"cannot read backbone weights {path} ({type(error).__name__}); replace the file, or pass "
            f"backbone.weights=null for random features"
        ) from error

"""The loader options every datamodule takes (``LoaderOptions``): declared once, passed by keyword, recorded with
their defaults, and listed in every datamodule's yaml."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import get_args

import pytest
from omegaconf import OmegaConf
from typing_extensions import Unpack, get_type_hints

from capsal.datamodules.base import LOADER_DEFAULTS, CaptionDataModule, LoaderOptions
from capsal.datamodules.coco import CocoCaptionsDataModule
from capsal.datamodules.flickr30k_entities import Flickr30kEntitiesDataModule
from capsal.datamodules.msrvtt import MSRVTTDataModule
from capsal.datamodules.msvd import MSVDDataModule
from capsal.datamodules.shapes import ShapesImageDataModule, ShapesVideoDataModule

CONF = Path(__file__).parents[2] / "capsal" / "conf" / "datamodule"
DATAMODULES = {
    "coco_captions": CocoCaptionsDataModule,
    "flickr30k_entities": Flickr30kEntitiesDataModule,
    "msrvtt": MSRVTTDataModule,
    "msvd": MSVDDataModule,
    "shapes_image": ShapesImageDataModule,
    "shapes_video": ShapesVideoDataModule,
}


def test_the_defaults_cover_exactly_the_options():
    assert set(LOADER_DEFAULTS) == set(get_type_hints(LoaderOptions))
    assert LoaderOptions.__required_keys__ == frozenset()  # every option may be left out


@pytest.mark.parametrize("cls", [CaptionDataModule, *DATAMODULES.values()])
def test_every_datamodule_takes_the_loader_options_as_unpacked_keywords(cls):
    hints = get_type_hints(cls.__init__, include_extras=True)
    kwargs = [p for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.VAR_KEYWORD]
    assert len(kwargs) == 1 and hints[kwargs[0].name] == Unpack[LoaderOptions]
    explicit = {name for name in inspect.signature(cls.__init__).parameters if name != "self"}
    assert not explicit & set(LOADER_DEFAULTS)  # declared once, in LoaderOptions
    assert all(name in hints for name in explicit - {kwargs[0].name})  # every parameter annotated
    if "protocol" in explicit:
        assert get_args(hints["protocol"]) == ("full", "center_crop")


@pytest.mark.parametrize("name", sorted(DATAMODULES))
def test_every_yaml_states_the_loader_options(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert set(LOADER_DEFAULTS) <= set(cfg), f"{name}.yaml lacks {set(LOADER_DEFAULTS) - set(cfg)}"


def test_loader_options_are_checked_recorded_and_unknown_ones_refused():
    dm = ShapesImageDataModule(num_train=2, num_val=1, num_test=1, batch_size=3)
    assert (dm.batch_size, dm.eval_batch_size, dm.num_workers, dm.seed) == (3, 3, 0, 0)
    assert {k: dm.hparams[k] for k in LOADER_DEFAULTS} == {**LOADER_DEFAULTS, "batch_size": 3}
    assert dm.hparams["num_train"] == 2 and dm.hparams["protocol"] == "full"
    with pytest.raises(TypeError, match=r"ShapesImageDataModule\.__init__\(\) got an unexpected .*'batch_sise'"):
        ShapesImageDataModule(batch_sise=3)
    with pytest.raises(ValueError, match=r"^batch_size=0 must be at least 1"):
        ShapesImageDataModule(batch_size=0)

"""Any Captum attribution method (Kokhlikyan et al., 2020) for each word of a caption, over the items the model reads.

Captum attributes a function of the input; here that function maps the ``(B, m, d)`` items (video with a grid: the
``(B, T, h, w, d)`` descriptor grid, through ``model.items``) to the ``(B, n)`` log-probabilities of the
teacher-forced sentence's tokens. One ``attribute(..., target=t)`` call per token column t gives per-feature
attributions, reduced over the feature dimension d into one score per item (video: per cell, summed to the frame;
how d is reduced: below). Padded items get 0.

Perturbation methods replace whole items by default: Occlusion slides a one-item window (one cell of the grid),
methods that take a ``feature_mask`` (FeatureAblation, ShapleyValueSampling, Lime, KernelShap, ...) group each
item's d features into one feature. Captum gives every feature of a perturbed group the group's change, so a
perturbation method's score is the mean over d (whole items: exactly the change of the word's log-probability when
the item is replaced by the baseline); a gradient method's is the sum over d (each feature's own share).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import warnings
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import torch
from einops import rearrange, reduce
from pydantic import AfterValidator, ConfigDict, Field
from torch import nn
from typing_extensions import TypedDict

from capsal.constraints import NonNegativeFloat, PositiveInt
from capsal.errors import UserError
from capsal.explainers.base import Sentences
from capsal.explainers.gradient import BackpropExplainer
from capsal.explainers.precision import Precision
from capsal.explainers.registry import register_explainer
from capsal.explainers.saliency import Saliency
from capsal.models.protocol import widened

# modules whose nonlinearities are no modules of their own: DeepLift's rules skip them (Captum gives no warning)
_NO_DEEPLIFT_RULES = (nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention)
_DEEPLIFT_FAMILY = ("DeepLift", "DeepLiftShap")
_NOISE_TUNNEL = ("nt_type", "nt_samples", "nt_samples_batch_size", "stdevs")


def _check_method(name: str) -> str:
    method_class(name)
    return name


CaptumMethod = Annotated[str, Field(strict=True), AfterValidator(_check_method)]


class CaptumOptions(TypedDict, total=False):
    """The keyword options of the method's ``attribute()`` a config may set; a key the method does not take is
    refused by name (:meth:`CaptumExplainer.check_arguments`). ``nt_*`` (and ``stdevs``) wrap the method in Captum's
    ``NoiseTunnel`` (SmoothGrad)."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
    baselines: float  # one constant for every feature (captum's default: 0)
    n_steps: PositiveInt
    method: Literal["riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
    internal_batch_size: PositiveInt
    perturbations_per_eval: PositiveInt
    sliding_window_shapes: list[PositiveInt]
    strides: PositiveInt | list[PositiveInt]
    n_samples: PositiveInt
    abs: bool
    stdevs: NonNegativeFloat
    nt_type: Literal["smoothgrad", "smoothgrad_sq", "vargrad"]
    nt_samples: PositiveInt
    nt_samples_batch_size: PositiveInt


@functools.cache
def _supported() -> dict[str, type]:
    """``{name: class}`` of the ``captum.attr`` methods that attribute a function's (or module's) inputs (Captum is
    imported here, when an explainer is built: it takes a second and pulls in matplotlib)."""
    import captum.attr

    found = {}
    for name in dir(captum.attr):
        cls = getattr(captum.attr, name)
        if not (inspect.isclass(cls) and issubclass(cls, captum.attr.Attribution)):
            continue
        init = list(inspect.signature(cls.__init__).parameters.values())[1:]
        attribute = inspect.signature(getattr(cls, "attribute", lambda: None)).parameters
        first_takes_model = bool(init) and init[0].name in ("forward_func", "model")
        others_optional = all(p.default is not p.empty for p in init[1:])
        if first_takes_model and others_optional and "inputs" in attribute and "target" in attribute:
            found[name] = cls
    return found


def method_class(name: str) -> type:
    """The ``captum.attr`` class ``name``; a ValueError in one line for a name capsal cannot run."""
    import captum.attr

    supported = _supported()
    if name in supported:
        return supported[name]
    cls = getattr(captum.attr, name, None)
    if inspect.isclass(cls) and "layer" in inspect.signature(cls.__init__).parameters:
        raise ValueError(
            f"{name} attributes a layer's activations or neurons; capsal attributes the items the model reads: use a "
            "method without a layer, e.g. IntegratedGradients"
        )
    if name == "NoiseTunnel":
        raise ValueError("NoiseTunnel wraps another method: give that method and options.nt_type (e.g. smoothgrad)")
    raise ValueError(f"{name!r} is no captum.attr method capsal can run; known: {', '.join(sorted(supported))}")


class _WordLogprobs(nn.Module):
    """The function Captum attributes: the items (or the grid) -> the ``(B, n)`` log-probabilities of the
    teacher-forced tokens (with a foil, their differences: :meth:`Sentences.explained`). ``rows``: the sentence of
    each input row (Captum repeats the inputs and the extra arguments alike, e.g. once per integration step). A
    module, so that model-based methods (DeepLift, LRP, GuidedBackprop) find the captioner's layers (under
    ``model.``)."""

    def __init__(self, model: Any, sentences: Sentences, from_grid: bool):
        super().__init__()
        self.model = model
        self.sentences = sentences
        self.from_grid = from_grid

    def forward(self, source: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        items = self.model.items(source) if self.from_grid else source
        return widened(self.sentences.explained(self.model, items, mask, rows=rows))


@register_explainer("captum")
class CaptumExplainer(BackpropExplainer):
    """A Captum attribution method by name (module doc); ``options``: its ``attribute()`` keyword options.

    ``beam_size``, ``precision`` and the grad mode as every back-propagating explainer's (perturbation methods
    take them too: one home for the options of the model calls). ``n_steps`` is 16 unless given (Captum's 50 costs
    a caption of n words 50 n forward and backward passes)."""

    defaults: dict[str, Any] = {"n_steps": 16}  # noqa: RUF012 (read only) for the methods that take them

    def __init__(
        self,
        method: CaptumMethod = "IntegratedGradients",
        options: CaptumOptions | None = None,
        beam_size: PositiveInt = 1,
        precision: Precision = 32,
    ):
        super().__init__(beam_size, precision)
        self.method = method
        self.options = None if options is None else dict(options)
        try:
            method_class(method)
        except ValueError as error:
            raise UserError(f"explainer {self.name!r}: method={method!r}: {error}") from None
        self.check_arguments({"method": method, "options": options})

    @staticmethod
    def check_arguments(arguments: dict, prefix: str = "") -> None:
        """Every key of ``options`` is one the method's ``attribute()`` takes (``nt_*``: with ``nt_type``)."""
        name, options = arguments.get("method", "IntegratedGradients"), arguments.get("options") or {}
        try:
            cls = method_class(name)
        except ValueError:
            return  # the method's own line
        takes = set(inspect.signature(cls.attribute).parameters) & set(CaptumOptions.__annotations__)
        if "nt_type" in options:
            takes |= set(_NOISE_TUNNEL)
        for key, value in options.items():
            if key not in takes:
                noise = " (nt_* and stdevs need nt_type)" if key in _NOISE_TUNNEL else ""
                raise UserError(
                    f"{prefix}options.{key}={value!r} is not an option of {name}.attribute{noise}; "
                    f"its options here: {', '.join(sorted(takes)) or 'none'}"
                )

    def _attribute(self, model: Any, items: torch.Tensor, grid: torch.Tensor | None, sentences: Sentences) -> Saliency:
        import captum.attr

        use_grid = sentences.layout.is_video and grid is not None
        source = (grid if use_grid else items).detach()
        forward = _WordLogprobs(model, sentences, use_grid)
        cls = method_class(self.method)
        if self.method in _DEEPLIFT_FAMILY:
            self._refuse_modules(forward)
        method = cls(forward)
        if "nt_type" in (self.options or {}):
            method = captum.attr.NoiseTunnel(method)
        reduction = "mean"  # a perturbation's change is shared by the features of what it perturbed
        if issubclass(cls, captum.attr.GradientAttribution):
            source = source.clone().requires_grad_(True)
            reduction = "sum"  # each feature's own share: the item's is their sum
        options = self._options(cls, source)
        columns = sentences.tokens.shape[1] - 1
        dtype = widened(source.detach()).dtype
        per_word = torch.zeros(source.shape[0], columns, *source.shape[1:-1], dtype=dtype, device=source.device)
        rows = torch.arange(source.shape[0], device=source.device)
        with torch.backends.cudnn.flags(enabled=False), self._explained(forward):  # cuDNN's RNN backward: no eval
            for t in self._word_columns(sentences):
                attribution = method.attribute(
                    source, target=t, additional_forward_args=(sentences.mask, rows), **options
                )
                per_word[:, t] = reduce(widened(attribution.detach()), "b ... d -> b ...", reduction)
        if not use_grid:
            return sentences.saliency(per_word * sentences.mask[:, None], explainer=self.name)
        regions = rearrange(per_word, "b n t h w -> b n t (h w)") * sentences.mask[:, None, :, None]
        return sentences.saliency(regions.sum(-1), region_scores=regions, explainer=self.name)

    @staticmethod
    def _word_columns(sentences: Sentences) -> list[int]:
        """The token columns some row's word owns (the others, eos and padding, stay 0: no row reads them)."""
        words = sentences.word_mask.sum(1, keepdim=True)
        rows = sentences.rows
        if rows is None:
            rows = torch.arange(sentences.word_mask.shape[1], device=words.device).expand_as(sentences.word_mask)
        return torch.nonzero((rows < words).any(0)).flatten().tolist()

    def _options(self, cls: type, source: torch.Tensor) -> dict[str, Any]:
        """The ``attribute()`` keywords: the given options, whole-item windows and feature groups by default, and a
        constant baseline as the tensor methods that sample baselines need."""
        parameters = inspect.signature(cls.attribute).parameters
        options = {key: value for key, value in self.defaults.items() if key in parameters} | (self.options or {})
        shape = source.shape[1:]
        if "sliding_window_shapes" in parameters:
            window = options.get("sliding_window_shapes", [1] * (len(shape) - 1) + [shape[-1]])
            if len(window) != len(shape):
                raise UserError(
                    f"options.sliding_window_shapes={list(window)} has {len(window)} sizes; {self.method} slides over "
                    f"inputs of shape {tuple(shape)} (batch aside): give {len(shape)}"
                )
            options["sliding_window_shapes"] = tuple(window)
            if isinstance(options.get("strides"), list):
                options["strides"] = tuple(options["strides"])
        if "feature_mask" in parameters:
            cells = torch.arange(shape[:-1].numel(), device=source.device).reshape(1, *shape[:-1], 1)
            options["feature_mask"] = cells.expand(1, *shape).contiguous()
        baseline = parameters.get("baselines")
        if baseline is not None and baseline.default is baseline.empty:  # GradientShap, DeepLiftShap: a distribution
            options["baselines"] = torch.full((2, *shape), float(options.get("baselines", 0.0)), device=source.device)
        return options

    def _refuse_modules(self, forward: nn.Module) -> None:
        """DeepLift's rules apply to nonlinearities that are modules; an RNN or attention computes its own inside,
        where Captum silently falls back to gradients: stop and name the module."""
        for path, module in forward.model.named_modules() if isinstance(forward.model, nn.Module) else ():
            if isinstance(module, _NO_DEEPLIFT_RULES):
                raise UserError(
                    f"captum method {self.method} cannot attribute through {path or 'the model'} "
                    f"({type(module).__name__}): its nonlinearities are no modules, so DeepLift's rules do not reach "
                    "them; use IntegratedGradients or Occlusion"
                )

    @contextlib.contextmanager
    def _explained(self, forward: nn.Module) -> Iterator[None]:
        """Captum's notes on hooks and gradients it sets itself kept quiet; a module Captum has no rule for (LRP)
        stops in one line naming the method and the module."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"(?s).*(Setting (forward|backward)|did not already require)")
            try:
                yield
            except TypeError as error:
                found = re.search(r"Module of type <class '([\w.]+)'>", str(error))
                if found is None:
                    raise
                kind = found.group(1).rpartition(".")[2]
                paths = [p.removeprefix("model.") for p, m in forward.named_modules() if type(m).__name__ == kind]
                where = paths[0] if paths else kind
                advice = "use IntegratedGradients or Occlusion"
                raise UserError(f"captum method {self.method} has no rule for {where} ({kind}); {advice}") from None


@register_explainer("integrated_gradients")
class IntegratedGradientsExplainer(CaptumExplainer):
    """Integrated Gradients (Sundararajan et al., 2017) through the captum explainer, under its own name so that
    evaluation tables name it; its method is fixed (no ``method`` option)."""

    def __init__(self, options: CaptumOptions | None = None, beam_size: PositiveInt = 1, precision: Precision = 32):
        super().__init__("IntegratedGradients", options, beam_size, precision)

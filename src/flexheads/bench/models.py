"""The models the bench times: each task's model at params.yaml's size and at a thesis size, in three attention
variants, plus the ViT's timm twin; and the training step every one of them takes.

Sizes: "default" is params.yaml's ``model.<task>`` unchanged; "thesis" is ``params/thesis.yaml``'s
(:func:`thesis_size`): its ``model.<task>`` and its input size, i.e. for cxr ViT-S/16 (Touvron et al. 2021) on 224 px
radiographs, for pose2d a TransPose-R-A4-like model (Yang et al. 2021: ResNet-50 cut after layer2, 768 tokens) on
256×192 crops, for pose3d the lifter over VideoPose3D's 243-frame receptive field (Pavllo et al. 2019).

Variants, all built by the task's own ``build_model`` from a :class:`~flexheads.config.RunConfig`:

* ``standard`` and ``flexible``: the head configurations of those names in ``heads.<task>``;
* ``flexible_equal_flops``: flexible heads with the standard heads' inner width, half as many heads twice as wide
  (``n_heads / 2`` × ``2 d_model / n_heads``; twice as many half as wide when ``n_heads`` is odd).  Per layer and
  forward pass, with ``N`` tokens, width ``d`` and inner width ``I = heads × d_head``, the q/k/v/out projections
  cost ``4 × 2 N d I`` FLOPs and ``Q K^T`` and ``A V`` ``2 × 2 N² I``: both depend on ``I`` alone, so equal ``I``
  is equal attention FLOPs (:func:`flexheads.nn.attention_flops`), and the ratio to ``standard`` measures how well
  the kernels run that head shape.

The timm twin (:func:`timm_twin`) is ``timm.models.vision_transformer.VisionTransformer`` with the ViT's patch,
image size, channels, classes, depth, width, heads and MLP ratio; timm's ViT is Pre-LN, so the comparison is
exact when the bench's regime is Pre-LN (``flexheads.bench.run.bench_regime`` picks one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from flexheads.config import Heads, Params, Run, RunConfig
from flexheads.models.lifter import LifterConfig
from flexheads.models.vit import VisionTransformer, ViTConfig
from flexheads.nn import ACTIVATIONS
from flexheads.optim.optimizers import build_optimizer

Batch = Any
TrainingStep = Callable[[Batch], None]


@dataclass(frozen=True)
class Size:
    """One size of a task's model: overrides of ``model.<task>`` and ``data.<task>`` (empty: params.yaml's)."""

    label: str  # what it is, for the tables
    tag: str  # short name in result keys (e.g. vit_<tag>_vs_timm_ratio)
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    heads: Mapping[str, Heads] = dataclasses.field(default_factory=dict)  # VARIANT_HEADS (empty: params.yaml's)


DEFAULT_SIZE = Size("params.yaml", "default")
INPUT_SIZE_KEYS = {"pose2d": "crop_size", "cxr": "image_size"}  # data.<task> keys of the model's input size
VARIANT_HEADS = ("standard", "flexible")  # the head configurations of heads.<task> the bench times


def thesis_size(thesis: Params, task: str) -> Size:
    """``task`` at ``params/thesis.yaml``'s size: its ``model.<task>`` (pretrained weights off: the bench times
    steps, it downloads nothing) and its input size."""
    model = getattr(thesis.model, task).model_dump()
    if "pretrained" in model:
        model["pretrained"] = False
    data = {key: getattr(thesis.task_data(task), key) for key in [INPUT_SIZE_KEYS.get(task)] if key}
    heads = {name: thesis.heads[task][name] for name in VARIANT_HEADS}
    shapes = {"heads": ", ".join("{} {}×{}".format(name, *h.shape(model["d_model"])) for name, h in heads.items())}
    described = ", ".join(f"{key} {value}" for key, value in {**model, **shapes, **data}.items()
                          if key in ("window", "backbone", "patch_size", "d_model", "heads", "n_layers",
                                     *INPUT_SIZE_KEYS.values()))
    return Size(f"params/thesis.yaml: {described}", "thesis", model=model, data=data, heads=heads)


def size_of(task: str, size: str, thesis: Params) -> Size:
    """``"default"`` or ``"thesis"`` (``thesis`` being params/thesis.yaml) for ``task``."""
    return DEFAULT_SIZE if size == "default" else thesis_size(thesis, task)


def equal_flops_heads(d_model: int, n_heads: int) -> tuple[int, int] | None:
    """``(heads, d_head)`` with ``heads × d_head = d_model`` and ``heads != n_heads``: half as many heads if that
    divides, else twice as many; None if neither divides ``d_model``."""
    for heads in (n_heads // 2, n_heads * 2):
        if heads >= 1 and d_model % heads == 0:
            return heads, d_model // heads
    return None


def variants(params: Params, task: str, regime: str, size: Size, batch_size: int) -> dict[str, RunConfig]:
    """The run configs of ``standard``, ``flexible`` and (where :func:`equal_flops_heads` finds heads)
    ``flexible_equal_flops`` of ``task`` at ``size``, trained with ``regime`` at ``batch_size``."""
    base = params.run_config(Run(task, "standard", regime))
    model = type(base.model).model_validate({**base.model.model_dump(), **size.model})
    train = base.train.model_copy(update={"batch_size": batch_size})
    heads = size.heads or {name: params.heads[task][name] for name in VARIANT_HEADS}
    flexible = Run(task, "flexible", regime)
    configs = {"standard": dataclasses.replace(base, model=model, train=train, heads=heads["standard"]),
               "flexible": dataclasses.replace(base, run=flexible, model=model, train=train, heads=heads["flexible"])}
    equal = equal_flops_heads(model.d_model, heads["standard"].n_heads)
    if equal is not None:
        configs["flexible_equal_flops"] = dataclasses.replace(
            base, run=flexible, model=model, train=train, heads=Heads(n_heads=equal[0], d_head=equal[1]))
    return configs


def tokens(model: nn.Module) -> int:
    """Tokens per sample the encoder of a flexheads model attends over (the ViT's include CLS)."""
    config = model.config
    if isinstance(config, LifterConfig):
        return config.n_joints
    rows, cols = config.grid
    return rows * cols + isinstance(config, ViTConfig)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class TupleOutput(nn.Module):
    """``model(x) -> (model(x), None)``: the ``(output, attention)`` every flexheads model returns, so a task's
    loss takes a model that returns a bare tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        return self.model(x), None


def timm_vit_class() -> type[nn.Module] | str:
    """timm's ``VisionTransformer`` class, or why it cannot be used (timm is the optional ``bench`` extra)."""
    try:
        from timm.models.vision_transformer import VisionTransformer as TimmViT
    except ImportError as err:
        return f"timm is not installed ({err}); pip install 'flexheads[bench]' for the ViT vs timm comparison"
    return TimmViT


def timm_twin(vit: VisionTransformer, timm_vit: type[nn.Module]) -> TupleOutput:
    """``timm_vit`` with ``vit``'s dimensions (module docstring), its dropout rates and activation."""
    c, e = vit.config, vit.config.encoder
    twin = timm_vit(img_size=c.image_size, patch_size=c.patch_size, in_chans=c.in_channels, num_classes=c.n_classes,
                    embed_dim=e.d_model, depth=e.n_layers, num_heads=e.n_heads, mlp_ratio=e.d_ff / e.d_model,
                    qkv_bias=True, class_token=True, global_pool="token", drop_rate=e.dropout,
                    proj_drop_rate=e.dropout, attn_drop_rate=e.dropout, act_layer=ACTIVATIONS[e.activation])
    hidden = twin.blocks[0].mlp.fc1.out_features
    if hidden != e.d_ff:
        raise ValueError(f"timm's MLP is {hidden} wide for mlp_ratio {e.d_ff / e.d_model}, the ViT's d_ff is {e.d_ff}")
    return TupleOutput(twin)


def training_step(model: nn.Module, loss_fn: Callable[[nn.Module, Batch], Tensor], config: RunConfig,
                  device: torch.device, compile_loss: bool = False) -> TrainingStep:
    """One step as ``flexheads.train.fit`` takes it, without its lr schedule, gradient clipping and loss reads:
    forward and loss (bf16 autocast on CUDA), backward, the regime's optimiser step (``fused`` as
    ``train.<task>.fused_optimizer`` says).  ``compile_loss``: ``loss_fn`` runs under ``torch.compile``, as
    ``train.<task>.compile`` has ``fit`` run it (its first call compiles)."""
    regime = config.regime
    optimizer = build_optimizer(model.parameters(), regime.optimizer, lr=regime.lr * config.train.lr_scale,
                                betas=regime.betas, weight_decay=regime.weight_decay,
                                fused=config.train.fused_optimizer)
    step_loss = torch.compile(loss_fn) if compile_loss else loss_fn

    def step(batch: Batch) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = step_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step

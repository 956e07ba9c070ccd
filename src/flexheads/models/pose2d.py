"""The thesis's 2D pose model: a ResNet trunk whose feature map becomes tokens for a transformer encoder, and
17 keypoint heatmaps read off the encoded tokens (TransPose, Yang et al. 2021, with an integral read-out).

A person crop ``(B, 3, H, W)`` passes a ResNet (torchvision's, re-implemented in :mod:`flexheads.nn.resnet` so
that training and evaluation need not import torchvision) cut after ``layer1``, ``layer2`` or ``layer3``
(``backbone_stride`` 4, 8, 16), a 1×1 convolution ``embed`` to ``d_model`` and a fixed 2D sinusoidal position
code: one token per cell of the ``rows × cols`` feature grid (64×48 crops at stride 8 give 8×6 = 48 tokens).
The configured encoder (standard or flexible heads, Post-LN, Pre-LN or no LayerNorm) mixes the tokens, and a
linear head gives each token one logit per keypoint: heatmaps ``h_kt`` over the grid. The coordinate is the
heatmap's expectation (*integral regression*, Sun et al. 2018), ``(x, y)_k = sum_t softmax_t(h_kt) c_t`` with
``c_t`` the cell centre in normalised crop coordinates, and its confidence the heatmap's peak ``max_t softmax_t``.

Why heatmaps on encoded tokens rather than keypoint queries in a decoder (DETR/PRTR style): every heatmap logit is
read from a token that passed every attention layer, so the attention configuration under study sits on the path
to every prediction, as in the lifter and the ViT; and query decoders learn slowly. On the synthetic default, after
600 CPU steps a 3-layer query decoder still predicted little better than the mean training pose (val L1 0.057 vs
0.059 in normalised crop units) while this encoder reached 0.046. The integral read-out keeps sub-cell,
differentiable coordinates evaluated in image pixels with no argmax quantisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from flexheads.models.config import ModelConfig
from flexheads.nn import EncoderConfig, TransformerEncoder, init_weights, sinusoidal_encoding
from flexheads.nn.resnet import TORCHVISION_WIDTH, TRUNK_STRIDES, load_resnet_weights
from flexheads.nn.resnet import resnet_trunk as random_resnet_trunk

BACKBONES = {  # backbone → its ImageNet weights in torchvision (``torchvision.models.<enum>.<member>``)
    "resnet18": ("ResNet18_Weights", "IMAGENET1K_V1"),
    "resnet34": ("ResNet34_Weights", "IMAGENET1K_V1"),
    "resnet50": ("ResNet50_Weights", "IMAGENET1K_V1"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics torchvision's ImageNet weights were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
# backbone_stride → modules of conv1, bn1, relu, maxpool, layer1-3 kept (5, 6, 7)
TRUNK_MODULES = {stride: 4 + n_stages for stride, n_stages in TRUNK_STRIDES.items()}


@dataclass(frozen=True)
class Pose2DConfig(ModelConfig):
    n_keypoints: int  # 17 COCO person keypoints, one heatmap each
    input_size: tuple[int, int]  # crop height, width (data.pose2d.crop_size)
    backbone: str  # resnet18 | resnet34 | resnet50
    backbone_stride: int  # 4, 8 or 16: the trunk is cut after layer1, layer2 or layer3
    pretrained: bool  # ImageNet weights for the trunk (a network download); random init keeps runs offline
    trunk_width: int  # the trunk's base channels (conv1, layer1); 64 is torchvision's, the only one pretrained takes
    flip_test: bool  # evaluation averages the crop's and its mirror's predictions (train.pose2d.flip_test)
    encoder: EncoderConfig  # its init applies to the transformer part; the trunk keeps torchvision's or ImageNet's

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(self.input_size))  # a list after a JSON round trip
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {tuple(BACKBONES)}, got {self.backbone!r}")
        if self.backbone_stride not in TRUNK_MODULES:
            raise ValueError(f"backbone_stride must be one of {tuple(TRUNK_MODULES)}, got {self.backbone_stride}")
        if self.pretrained and self.trunk_width != TORCHVISION_WIDTH:
            raise ValueError(f"pretrained ImageNet weights need trunk_width {TORCHVISION_WIDTH} (torchvision's), "
                             f"got {self.trunk_width}")

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(rows, cols)``: each stride-2 stage of the trunk rounds an odd size up."""
        return tuple(math.ceil(side / self.backbone_stride) for side in self.input_size)  # type: ignore[return-value]


class KeypointPrediction(NamedTuple):
    coords: Tensor  # (B, K, 2) (x, y) in [0, 1]: crop pixels divided by (W, H)
    heatmaps: Tensor  # (B, K, rows * cols) logits over the token grid
    attention: list[Tensor] | None  # per encoder layer, self-attention (B, h, rows * cols, rows * cols)

    @property
    def confidence(self) -> Tensor:
        """``(B, K)`` the heatmap peak ``max_t softmax_t(h_kt)``: the keypoint's score."""
        return self.heatmaps.softmax(-1).amax(-1)


def sinusoidal_encoding_2d(rows: int, cols: int, d_model: int) -> Tensor:
    """``(rows * cols, d_model)`` row-major: the first ``d_model - d_model // 2`` channels encode the row,
    the rest the column, each with :func:`flexheads.nn.sinusoidal_encoding` (the DETR layout)."""
    d_row = d_model - d_model // 2
    row = sinusoidal_encoding(rows, d_row)[:, None, :].expand(rows, cols, d_row)
    col = sinusoidal_encoding(cols, d_model // 2)[None, :, :].expand(rows, cols, d_model // 2)
    return torch.cat([row, col], dim=-1).reshape(rows * cols, d_model)


def cell_centres(rows: int, cols: int) -> Tensor:
    """``(rows * cols, 2)`` row-major ``(x, y)`` centres of the token cells in normalised crop coordinates."""
    y, x = torch.meshgrid((torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols, indexing="ij")
    return torch.stack([x, y], -1).reshape(rows * cols, 2)


def imagenet_state_dict(name: str) -> dict[str, Tensor]:
    """torchvision's ImageNet weights of ResNet ``name`` (a full ResNet's state_dict), downloaded on first use into
    ``torch.hub.get_dir()/checkpoints``. The only use of torchvision, imported here: it costs ~2 CPU-seconds."""
    from torchvision import models  # lazily: only pretrained trunks need it

    enum, member = BACKBONES[name]
    weights = getattr(models, enum)[member]
    try:
        return weights.get_state_dict(progress=True, check_hash=True)  # what resnet*(weights=...) loads
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a corrupt download a RuntimeError
        raise RuntimeError(
            f"model.pose2d.pretrained is true but the ImageNet weights of {name} could not be loaded "
            f"({type(err).__name__}: {err}). Put {weights.url.rsplit('/', 1)[-1]} in "
            f"{torch.hub.get_dir()}/checkpoints on a machine with a network, or set model.pose2d.pretrained: false"
        ) from err


def resnet_trunk(name: str, pretrained: bool, stride: int,
                 width: int = TORCHVISION_WIDTH) -> tuple[nn.Sequential, int]:
    """torchvision's ResNet ``name`` up to and including ``layer1``, ``layer2`` or ``layer3`` (``stride`` 4, 8, 16),
    as ``nn.Sequential(conv1, bn1, relu, maxpool, layer1, ...)``, and its output channels: torchvision's random
    init (bit-identical under the same seed, see :mod:`flexheads.nn.resnet`) or, ``pretrained``, ImageNet's.
    ``width``: base channels, torchvision's 64 or (random init only: ImageNet's weights fit 64 alone) a narrower
    or wider trunk of the same architecture."""
    trunk, channels = random_resnet_trunk(name, stride, width)  # drawn either way, as torchvision's builder does
    if pretrained:
        load_resnet_weights(trunk, imagenet_state_dict(name))
    return trunk, channels


class KeypointTransformer(nn.Module):
    """Crop → 17 keypoints; see the module docstring.

    Initialisation (:func:`flexheads.nn.init_weights`) of the transformer part; the trunk keeps torchvision's or
    ImageNet's under both schemes. ``init='tfixup'`` applies :func:`flexheads.nn.t_fixup_`: the 1×1 ``embed``
    Xavier-uniform (bias 0) × ``sqrt(d_model) (9 N)^-1/4`` (T-Fixup's token-embedding treatment, transferred to
    this continuous projection); the sinusoidal positions are fixed, untouched by either scheme.
    ``init='xavier'``: :func:`flexheads.nn.xavier_`.

    Args:
        load_pretrained: fetch ImageNet weights when ``config.pretrained`` (False when a checkpoint supplies
            every weight anyway).
    """

    def __init__(self, config: Pose2DConfig, *, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.backbone, channels = resnet_trunk(config.backbone, config.pretrained and load_pretrained,
                                               config.backbone_stride, config.trunk_width)
        d = config.encoder.d_model
        self.embed = nn.Conv2d(channels, d, kernel_size=1)  # named `embed`: T-Fixup's token embedding
        self.register_buffer("positions", sinusoidal_encoding_2d(*config.grid, d), persistent=False)
        self.register_buffer("cell_centres", cell_centres(*config.grid), persistent=False)
        self.encoder = TransformerEncoder.from_config(config.encoder)
        self.head = nn.Linear(d, config.n_keypoints)  # per token: one heatmap logit per keypoint
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        init_weights(self, config.encoder.init)  # the trunk's BatchNorm is allowed; T-Fixup rejects only LayerNorm

    def predict(self, images: Tensor, need_weights: bool = False) -> KeypointPrediction:
        """``images (B, 3, H, W)`` RGB in [0, 1] → coordinates, heatmap logits, self-attention maps."""
        if tuple(images.shape[-2:]) != self.config.input_size:
            raise ValueError(f"expected crops of {self.config.input_size} (H, W), got {tuple(images.shape[-2:])}")
        features = self.embed(self.backbone((images - self.mean) / self.std))  # (B, d_model, rows, cols)
        tokens = features.flatten(2).transpose(1, 2) + self.positions.to(features.dtype)  # (B, rows*cols, d_model)
        x, weights = self.encoder(tokens, need_weights=need_weights)
        with torch.autocast(x.device.type, enabled=False):  # bf16 would round a coordinate to ~1/500 of the crop
            heatmaps = self.head(x.float()).transpose(1, 2)  # (B, K, rows*cols)
            coords = heatmaps.softmax(-1) @ self.cell_centres  # (B, K, 2)
        return KeypointPrediction(coords, heatmaps, weights)

    def forward(self, images: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """``(B, 3, H, W)`` in [0, 1] → ``(coords (B, K, 2) in [0, 1], self-attention maps or None)``, the
        ``(output, weights)`` shape every flexheads model returns."""
        prediction = self.predict(images, need_weights)
        return prediction.coords, prediction.attention


def heatmap_targets(target: Tensor, config: Pose2DConfig, centres: Tensor, sigma: float = 1.0) -> Tensor:
    """``(B, K, rows * cols)`` target distributions: a Gaussian of ``sigma`` cells around each keypoint,
    ``q_kt ∝ exp(-|c_t - p_k|² / 2σ²)`` with distances in cells; ``target (B, K, 2)`` in normalised crop
    coordinates."""
    rows, cols = config.grid
    cells = torch.tensor([cols, rows], dtype=target.dtype, device=target.device)
    squared = ((centres - target[:, :, None]) * cells).square().sum(-1)
    return (-squared / (2 * sigma**2)).softmax(-1)

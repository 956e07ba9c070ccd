"""The thesis's 2D pose model: a ResNet trunk, feature tokens, and 17 keypoint queries in a transformer decoder.

A person crop ``(B, 3, H, W)`` passes a torchvision ResNet cut after ``layer3`` (stride 16: a 128×96 crop gives an
8×6 grid of 48 tokens, where ``layer4`` would leave 4×3), a 1×1 convolution ``embed`` to ``d_model``, and a fixed
2D sinusoidal position code.  17 learned keypoint queries attend to each other and to the tokens through the
configured decoder (standard or flexible heads, Post-LN, Pre-LN or no LayerNorm), and a linear head reads each
query's ``(x, y)`` (sigmoid: normalised crop coordinates in [0, 1]) and a visibility logit.

Why queries + regression, not heatmaps: every output coordinate is read from a query that got there only through
attention, so the attention configuration under study (head width, norm placement, init) sits on the path to every
prediction, and its cross-attention maps show where each keypoint looked; a heatmap head would make the transformer
one refinement stage between a CNN and a deconvolution decoder. Regression also gives sub-pixel coordinates with
no argmax quantisation at stride 16 and the same L1 objective as the pose3d lifter; the price is that query
regressors (PRTR, Li et al. 2021) need longer training than heatmap models of the same size to match them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torchvision
from torch import Tensor, nn

from flexheads.nn import TransformerDecoder, sinusoidal_encoding, t_fixup_, xavier_

BACKBONES = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics torchvision's ImageNet weights were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDE = 16  # the trunk stops after layer3: four stride-2 stages


@dataclass(frozen=True)
class Pose2DConfig:
    n_keypoints: int = 17  # COCO person keypoints, one query each
    input_size: tuple[int, int] = (128, 96)  # crop height, width (COCO's 4:3 person aspect at a CPU-sized scale)
    backbone: str = "resnet18"  # resnet18 | resnet34 | resnet50, cut after layer3
    pretrained: bool = False  # ImageNet weights for the trunk (a network download); random init keeps runs offline
    d_model: int = 128
    n_heads: int = 8
    d_head: int | None = None  # None: standard heads, d_model // n_heads wide
    n_layers: int = 3  # decoder layers
    d_ff: int = 256
    dropout: float = 0.1
    activation: str = "gelu"
    norm: str = "post"  # post | pre | none
    init: str = "xavier"  # xavier | tfixup (transformer part only; the trunk keeps torchvision's or ImageNet's)
    flip_test: bool = True  # evaluation averages the crop's and its mirror's predictions (train.pose2d.flip_test)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(self.input_size))  # a list after a JSON round trip
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {tuple(BACKBONES)}, got {self.backbone!r}")

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(rows, cols)``: each stride-2 stage of the trunk rounds an odd size up."""
        return tuple(math.ceil(side / STRIDE) for side in self.input_size)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return asdict(self)


class KeypointPrediction(NamedTuple):
    coords: Tensor  # (B, K, 2) (x, y) in [0, 1]: crop pixels divided by (W, H)
    visibility_logits: Tensor  # (B, K): logit of "labelled and inside the crop"
    attention: list[Tensor] | None  # per decoder layer, cross-attention (B, h, K, rows * cols)


def sinusoidal_encoding_2d(rows: int, cols: int, d_model: int) -> Tensor:
    """``(rows * cols, d_model)`` row-major: the first ``d_model - d_model // 2`` channels encode the row,
    the rest the column, each with :func:`flexheads.nn.sinusoidal_encoding` (the DETR layout)."""
    d_row = d_model - d_model // 2
    row = sinusoidal_encoding(rows, d_row)[:, None, :].expand(rows, cols, d_row)
    col = sinusoidal_encoding(cols, d_model // 2)[None, :, :].expand(rows, cols, d_model // 2)
    return torch.cat([row, col], dim=-1).reshape(rows * cols, d_model)


def resnet_trunk(name: str, pretrained: bool) -> tuple[nn.Sequential, int]:
    """A torchvision ResNet up to and including ``layer3``, and its output channels."""
    builder, weights = BACKBONES[name]
    try:
        resnet = builder(weights=weights if pretrained else None)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a corrupt download a RuntimeError
        raise RuntimeError(
            f"model.pose2d.pretrained is true but the ImageNet weights of {name} could not be loaded "
            f"({type(err).__name__}: {err}). Put {weights.url.rsplit('/', 1)[-1]} in "
            f"{torch.hub.get_dir()}/checkpoints on a machine with a network, or set model.pose2d.pretrained: false"
        ) from err
    trunk = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                          resnet.layer1, resnet.layer2, resnet.layer3)  # fmt: skip
    return trunk, resnet.fc.in_features // 2  # layer4 doubles layer3's channels in every torchvision ResNet


class KeypointTransformer(nn.Module):
    """Crop → 17 keypoints; see the module docstring.

    Args:
        load_pretrained: fetch ImageNet weights when ``config.pretrained`` (False when a checkpoint supplies
            every weight anyway).
    """

    def __init__(self, config: Pose2DConfig, *, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.backbone, channels = resnet_trunk(config.backbone, config.pretrained and load_pretrained)
        self.embed = nn.Conv2d(channels, config.d_model, kernel_size=1)  # named `embed`: T-Fixup scales it
        self.register_buffer("positions", sinusoidal_encoding_2d(*config.grid, config.d_model), persistent=False)
        self.queries = nn.Embedding(config.n_keypoints, config.d_model)  # the decoder's input embeddings
        self.decoder = TransformerDecoder(
            config.n_layers, config.d_model, config.n_heads, d_head=config.d_head, d_ff=config.d_ff,
            dropout=config.dropout, activation=config.activation, norm=config.norm,
        )
        self.head = nn.Linear(config.d_model, 3)  # x, y logits and the visibility logit
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if config.init == "tfixup":  # the trunk's BatchNorm is allowed; t_fixup_ rejects only LayerNorm
            t_fixup_(self, n_encoder_layers=0, n_decoder_layers=config.n_layers)
        else:
            nn.init.xavier_uniform_(self.embed.weight)  # as T-Fixup starts it, before its scaling
            nn.init.zeros_(self.embed.bias)
            for module in (self.queries, self.decoder, self.head):
                xavier_(module)

    def predict(self, images: Tensor, need_weights: bool = False) -> KeypointPrediction:
        """``images (B, 3, H, W)`` RGB in [0, 1] → coordinates, visibility logits, cross-attention maps."""
        if tuple(images.shape[-2:]) != self.config.input_size:
            raise ValueError(f"expected crops of {self.config.input_size} (H, W), got {tuple(images.shape[-2:])}")
        features = self.embed(self.backbone((images - self.mean) / self.std))  # (B, d_model, rows, cols)
        tokens = features.flatten(2).transpose(1, 2) + self.positions.to(features.dtype)  # (B, rows*cols, d_model)
        queries = self.queries.weight.expand(len(images), -1, -1)  # (B, K, d_model)
        x, weights = self.decoder(queries, tokens, need_weights=need_weights)  # (B, K, d_model)
        with torch.autocast(x.device.type, enabled=False):  # bf16 would round a coordinate to ~1/500 of the crop
            out = self.head(x.float())  # (B, K, 3)
        return KeypointPrediction(out[..., :2].sigmoid(), out[..., 2], weights)

    def forward(self, images: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """``(B, 3, H, W)`` in [0, 1] → ``(coords (B, K, 2) in [0, 1], cross-attention maps or None)``, the
        ``(output, weights)`` shape every flexheads model returns."""
        prediction = self.predict(images, need_weights)
        return prediction.coords, prediction.attention

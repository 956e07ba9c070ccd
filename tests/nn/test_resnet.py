"""flexheads.nn.resnet against torchvision's ResNets: the same modules, state_dict, outputs and random init."""
import copy
import functools
import subprocess
import sys

import pytest
import torch
from torch import nn

from flexheads.nn.resnet import (RESNETS, STAGE_NAMES, TORCHVISION_WIDTH, TRUNK_STRIDES, load_resnet_weights,
                                  resnet_trunk)

torchvision = pytest.importorskip("torchvision")

CASES = [(name, stride) for name in RESNETS for stride in TRUNK_STRIDES]
SEED = 1234


@functools.cache
def torchvision_resnet(name: str) -> tuple[nn.Module, torch.Tensor]:
    """torchvision's ``name`` built under ``SEED``, and the generator state its constructor leaves."""
    torch.manual_seed(SEED)
    model = getattr(torchvision.models, name)(weights=None)
    return model, torch.get_rng_state()


def torchvision_trunk(name: str, stride: int) -> nn.Sequential:
    """torchvision's ResNet cut as ``flexheads.models.pose2d`` used to cut it (a fresh copy)."""
    model = copy.deepcopy(torchvision_resnet(name)[0])
    stages = [model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3]
    return nn.Sequential(*stages[: 4 + TRUNK_STRIDES[stride]])


@functools.cache
def our_trunk(name: str, stride: int) -> tuple[nn.Sequential, int, torch.Tensor]:
    torch.manual_seed(SEED)
    trunk, channels = resnet_trunk(name, stride)
    return trunk, channels, torch.get_rng_state()


@pytest.mark.parametrize(("name", "stride"), CASES)
def test_modules_and_state_dict_are_torchvisions(name, stride):
    reference, ours = torchvision_trunk(name, stride), our_trunk(name, stride)[0]
    ref_sd, our_sd = reference.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert {k: v.shape for k, v in our_sd.items()} == {k: v.shape for k, v in ref_sd.items()}
    assert {k: v.dtype for k, v in our_sd.items()} == {k: v.dtype for k, v in ref_sd.items()}
    ours.load_state_dict(ref_sd, strict=True)
    assert [type(m).__name__ for m in ours.modules()] == [type(m).__name__ for m in reference.modules()]
    assert [repr(m) for m in ours.modules() if not list(m.children())] == \
        [repr(m) for m in reference.modules() if not list(m.children())]  # every conv, bn, relu, pool's settings


@pytest.mark.parametrize(("name", "stride"), CASES)
def test_output_channels(name, stride):
    trunk, channels, _ = our_trunk(name, stride)
    assert channels == torchvision_resnet(name)[0].fc.in_features * stride // 32
    assert trunk.eval()(torch.randn(1, 3, 32, 32)).shape == (1, channels, 32 // stride, 32 // stride)


@pytest.mark.parametrize(("name", "stride"), CASES)
def test_init_is_torchvisions_bit_for_bit(name, stride):
    """Same seed, same kept parameters and buffers to the bit, and the generator ends where torchvision's
    constructor (which also draws for layer4 and fc) leaves it."""
    reference = torchvision_trunk(name, stride).state_dict()
    trunk, _, rng_after = our_trunk(name, stride)
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert torch.equal(rng_after, torchvision_resnet(name)[1])


@pytest.mark.parametrize(("name", "stride"), CASES)
def test_outputs_equal_torchvisions_with_the_same_weights(name, stride):
    torch.manual_seed(0)
    reference = torchvision_trunk(name, stride)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters for eval mode
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    ours = copy.deepcopy(our_trunk(name, stride)[0])
    ours.load_state_dict(reference.state_dict(), strict=True)
    images = torch.randn(2, 3, 37, 29)  # odd sizes: every stride-2 stage rounds up
    with torch.no_grad():
        expected, actual = reference.eval()(images), ours.eval()(images)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("stride", list(TRUNK_STRIDES))
def test_loads_a_full_torchvision_state_dict(stride):
    full = torchvision_resnet("resnet18")[0].state_dict()  # conv1..layer4, fc: what ImageNet checkpoints hold
    trunk, _ = resnet_trunk("resnet18", stride)
    for module in trunk.modules():  # differ from torchvision's before loading
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.fill_(2.0)
    load_resnet_weights(trunk, full)
    reference = torchvision_trunk("resnet18", stride).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in trunk.state_dict().items())
    with pytest.raises(RuntimeError, match="unexpected keys"):
        load_resnet_weights(trunk, {**full, "head.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Missing key"):
        load_resnet_weights(trunk, {k: v for k, v in full.items() if k != "conv1.weight"})


def test_pretrained_trunk_loads_torchvisions_imagenet_file(tmp_path, monkeypatch):
    """``model.pose2d.pretrained``: the weights file torchvision would download (here a stand-in in the hub
    cache, so the test runs offline) loads into the trunk."""
    from flexheads.models.pose2d import resnet_trunk as pose_trunk

    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    full = torchvision_resnet("resnet18")[0].state_dict()
    stand_in = {k: v + 1 if v.is_floating_point() else v for k, v in full.items()}
    torch.save(stand_in, tmp_path / "checkpoints" / weights.url.rsplit("/", 1)[-1])
    trunk, channels = pose_trunk("resnet18", True, 8)
    assert channels == 128
    for key, value in trunk.state_dict().items():  # "4.0.conv1.weight" ← torchvision's "layer1.0.conv1.weight"
        index, rest = key.split(".", 1)
        assert torch.equal(value, stand_in[f"{STAGE_NAMES[int(index)]}.{rest}"]), key


def test_pose2d_imports_no_torchvision():
    code = ("import sys, flexheads.models.pose2d, flexheads.tasks.pose2d; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("name", "stride"), [("resnet18", 8), ("resnet50", 16)])
def test_width_64_is_torchvisions_trunk(name, stride):
    """``width=64`` given explicitly is the default: torchvision's keys, shapes and init, bit for bit."""
    torch.manual_seed(SEED)
    trunk, channels = resnet_trunk(name, stride, width=TORCHVISION_WIDTH)
    reference = torchvision_trunk(name, stride).state_dict()
    assert {k: v.shape for k, v in trunk.state_dict().items()} == {k: v.shape for k, v in reference.items()}
    assert all(torch.equal(v, reference[k]) for k, v in trunk.state_dict().items())
    assert channels == our_trunk(name, stride)[1]


@pytest.mark.parametrize(("name", "stride", "width"), [("resnet18", 8, 16), ("resnet18", 4, 24), ("resnet50", 16, 8)])
def test_narrow_trunk_scales_every_channel_count(name, stride, width):
    """Another width keeps torchvision's modules and keys and divides every channel count (but the image's 3)
    by 64 / width; its output has ``width · expansion · 2^(stages - 1)`` channels."""
    reference = {k: v.shape for k, v in our_trunk(name, stride)[0].state_dict().items()}
    trunk, channels = resnet_trunk(name, stride, width=width)
    shapes = {k: v.shape for k, v in trunk.state_dict().items()}
    assert list(shapes) == list(reference)
    for key, shape in shapes.items():
        expected = [n if n == 3 and i == 1 else n * width // TORCHVISION_WIDTH for i, n in enumerate(reference[key])]
        if len(shape) == 4:  # kernel sizes are not channels
            expected[2:] = reference[key][2:]
        assert list(shape) == expected, key
    assert channels == our_trunk(name, stride)[1] * width // TORCHVISION_WIDTH
    assert trunk.eval()(torch.randn(1, 3, 32, 32)).shape == (1, channels, 32 // stride, 32 // stride)


def test_narrow_trunk_is_seeded():
    torch.manual_seed(0)
    first = resnet_trunk("resnet18", 8, width=16)[0].state_dict()
    torch.manual_seed(0)
    second = resnet_trunk("resnet18", 8, width=16)[0].state_dict()
    assert all(torch.equal(v, second[k]) for k, v in first.items())


def test_pretrained_needs_torchvisions_width():
    from flexheads.models.pose2d import Pose2DConfig
    from flexheads.nn import EncoderConfig

    encoder = EncoderConfig(d_model=32, n_heads=4, d_head=None, n_layers=1, d_ff=64, dropout=0.0,
                            activation="gelu", norm="post", init="xavier")
    fields = dict(n_keypoints=17, input_size=(64, 48), backbone="resnet18", backbone_stride=8, flip_test=True,
                  encoder=encoder)
    with pytest.raises(ValueError, match="pretrained ImageNet weights need trunk_width 64"):
        Pose2DConfig(pretrained=True, trunk_width=32, **fields)
    assert Pose2DConfig(pretrained=False, trunk_width=32, **fields).trunk_width == 32

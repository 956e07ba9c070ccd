"""Every model config with an encoder refuses an unknown init scheme, built directly or reloaded from the dict
``model.pt`` saves: the encoder's config validates it once (``EncoderConfig``), naming the allowed schemes."""

import re

import pytest

from flexheads.models.lifter import LifterConfig
from flexheads.models.pose2d import Pose2DConfig
from flexheads.models.vit import ViTConfig
from flexheads.nn import EncoderConfig

ENCODER = {"d_model": 32, "n_heads": 4, "d_head": None, "n_layers": 2, "d_ff": 64, "dropout": 0.0,
           "activation": "gelu", "norm": "post"}
CONFIGS = {  # each model config's own fields
    LifterConfig: {"n_joints": 17, "window": 1},
    Pose2DConfig: {"n_keypoints": 17, "input_size": (64, 48), "backbone": "resnet18", "backbone_stride": 8,
                   "pretrained": False, "trunk_width": 16, "flip_test": False},
    ViTConfig: {"image_size": 16, "patch_size": 4, "in_channels": 1, "n_classes": 15},
}
ALLOWED = re.escape("init must be one of ('xavier', 'tfixup'), got 'kaiming'")


@pytest.mark.parametrize("config_class", CONFIGS, ids=lambda c: c.__name__)
def test_an_unknown_init_is_refused_naming_the_schemes(config_class):
    fields = CONFIGS[config_class]
    valid = config_class(**fields, encoder=EncoderConfig(**ENCODER, init="xavier"))
    assert config_class.from_dict(valid.to_dict()) == valid
    with pytest.raises(ValueError, match=ALLOWED):
        config_class(**fields, encoder=EncoderConfig(**ENCODER, init="kaiming"))
    saved = valid.to_dict()
    saved["encoder"]["init"] = "kaiming"
    with pytest.raises(ValueError, match=ALLOWED):
        config_class.from_dict(saved)

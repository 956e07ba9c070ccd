"""The pose3d models (transformer lifter, Martinez MLP): the root joint is exactly 0 by construction, fresh and
trained, and the other joints are the head's de-standardised outputs."""

import pytest
import torch
from torch import nn

from flexheads.data import h36m
from flexheads.models.baselines import MartinezConfig, MartinezMLP
from flexheads.models.lifter import LifterConfig, PoseLifter, mpjpe_loss
from flexheads.models.standardise import Standardiser
from flexheads.nn import EncoderConfig

B, W, J = 8, 3, 17


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def lifter(norm: str = "post", init: str = "xavier") -> PoseLifter:
    encoder = EncoderConfig(d_model=32, n_heads=4, d_head=None, n_layers=2, d_ff=64, dropout=0.0,
                            activation="gelu", norm=norm, init=init)
    return PoseLifter(LifterConfig(n_joints=J, window=W, encoder=encoder))


def mlp() -> MartinezMLP:
    return MartinezMLP(MartinezConfig(n_joints=J, window=W, hidden=64, n_blocks=1, dropout=0.1))


MODELS = {"lifter-xavier": lifter, "lifter-tfixup": lambda: lifter("none", "tfixup"), "mlp": mlp}


def pose_statistics() -> tuple[torch.Tensor, torch.Tensor]:
    """Root-relative statistics ``(J, 3)``: the root's mean and std are 0, the others' are not."""
    mean, std = torch.randn(J, 3) * 0.2, torch.rand(J, 3) * 0.3 + 0.1
    mean[0], std[0] = 0.0, 0.0
    return mean, std


def test_the_root_is_h36ms_joint_0():
    assert h36m.PARENTS[0] == -1 and h36m.PARENTS.count(-1) == 1


def test_inverse_with_root_on_a_hand_made_case():
    norm = Standardiser(3, 2)
    norm.set_(torch.tensor([[5.0, 5.0], [1.0, 2.0], [0.0, -1.0]]), torch.tensor([[0.0, 0.0], [2.0, 3.0], [1.0, 0.5]]))
    pose = norm.inverse_with_root(torch.tensor([[[1.0, -1.0], [2.0, 4.0]]]))  # joints 1 and 2, standardised
    expected = torch.tensor([[[0.0, 0.0], [1.0 + 2.0, 2.0 - 3.0], [0.0 + 2.0, -1.0 + 2.0]]])  # y' std + mean
    torch.testing.assert_close(pose, expected, rtol=0, atol=0)


def head_outputs(model: nn.Module) -> list[torch.Tensor]:
    """Filled with the model's head output at each forward."""
    outputs = []
    model.head.register_forward_hook(lambda module, args, out: outputs.append(out.detach()))
    return outputs


@pytest.mark.parametrize("name", MODELS)
def test_root_is_exactly_zero_fresh_and_after_training(name):
    model = MODELS[name]()
    x = torch.randn(B, W, J, 2)
    assert (model.eval()(x)[0][:, 0] == 0).all()  # fresh: default statistics (mean 0, std 1)

    mean, std = pose_statistics()
    model.input_norm.set_(torch.full((J, 2), 0.5), torch.full((J, 2), 0.2))
    model.output_norm.set_(mean, std)
    target = mean + std * torch.randn(B, J, 3)  # root-relative: the root row is 0
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(5):
        loss = mpjpe_loss(model(x)[0], target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    outputs = head_outputs(model)
    pred = model.eval()(x)[0]
    assert pred.shape == (B, J, 3) and (pred[:, 0] == 0).all()
    # joints 1..J-1: the head's standardised outputs de-standardised with their own statistics
    torch.testing.assert_close(pred[:, 1:], outputs[0].view(B, J - 1, 3) * std[1:] + mean[1:])


def test_mlp_predicts_only_the_non_root_joints():
    assert mlp().head.out_features == (J - 1) * 3  # Martinez et al.'s 16 × 3 outputs

import pytest
import torch

from tide_lightning import lambda_train, midrange_weight, tidal_lambda
from tide_lightning.method.schedules import time_weight


@pytest.mark.parametrize(
    "progress,expected", [(0.0, 0.10), (0.25, 0.2172), (0.5, 0.50), (0.75, 0.7828), (1.0, 0.90)]
)
def test_cosine_reference_values(progress, expected):
    assert lambda_train(progress) == pytest.approx(expected, abs=1e-4)


def test_linear_shape_and_clamping():
    assert lambda_train(0.25, shape="linear") == pytest.approx(0.1 + 0.8 * 0.25)
    assert lambda_train(-1.0) == pytest.approx(0.1)
    assert lambda_train(2.0) == pytest.approx(0.9)


def test_axes():
    t = torch.tensor([0.5, 0.25, 1.0])
    # both: lambda_train(0.5) * (1 - t) = 0.5 * (1 - t)
    assert torch.allclose(tidal_lambda(t, 0.5), torch.tensor([0.25, 0.375, 0.0]))
    assert torch.allclose(tidal_lambda(t, 1.0, axis="training_only"), torch.full((3,), 0.9))
    assert torch.allclose(
        tidal_lambda(t, 0.0, axis="timestep_only"), torch.tensor([0.45, 0.675, 0.0])
    )


def test_bad_choices_name_the_value():
    with pytest.raises(ValueError, match="sideways"):
        tidal_lambda(torch.zeros(1), 0.5, axis="sideways")
    with pytest.raises(ValueError, match="cubic"):
        lambda_train(0.5, shape="cubic")


def test_midrange_weight():
    w = midrange_weight(torch.tensor([0.5, 0.65, 0.35]))
    assert torch.allclose(w, torch.tensor([1.0, 0.6065307, 0.6065307]), atol=1e-6)
    assert torch.equal(time_weight(torch.rand(4), "uniform"), torch.ones(4))

import pytest
import torch

from tide_lightning import VARIANTS, get_variant

SPEC_SECTION_8 = {
    "ce": ("shared", "cross"),
    "kl": ("shared",),
    "reverse_kl": ("shared",),
    "tide_shared": ("shared",),
    "calm": ("cross",),
    "tide_cross": ("cross",),
    "tide_shared_chunk": ("cross",),
}


def test_registry_is_exactly_spec_section_8():
    assert {name: v.pipelines for name, v in VARIANTS.items()} == SPEC_SECTION_8


def test_compdemo_defaults_follow_the_paper():
    assert {n for n, v in VARIANTS.items() if v.compdemo} == {"tide_shared", "tide_shared_chunk"}
    assert {n for n, v in VARIANTS.items() if v.uses_tidal} == {"tide_shared", "tide_shared_chunk"}


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "ce"])
def test_every_loss_has_the_uniform_signature(name):
    variant = VARIANTS[name]
    shape = (6, 11) if variant.level == "token" else (6,)
    student = (torch.randn(shape) - (0 if variant.level == "token" else 3)).requires_grad_()
    teacher = torch.randn(shape) - (0 if variant.level == "token" else 3)
    loss = variant.loss(
        student, teacher, lam=torch.full((6,), 0.4), weight=torch.ones(6), temperature=2.0
    )
    loss.backward()
    assert torch.isfinite(loss) and student.grad is not None


def test_get_variant_errors_name_the_choices():
    with pytest.raises(ValueError, match="tide_shared"):
        get_variant("tidal")
    with pytest.raises(ValueError, match="cross"):
        get_variant("tide_cross", pipeline="shared")
    assert get_variant("ce", pipeline="cross").loss is None

import pytest
import torch

from tide_lightning import VARIANTS, get_variant

METHOD_MD_VARIANTS = {  # docs/method.md §12
    "ce": ("shared", "cross"),
    "kl": ("shared",),
    "reverse_kl": ("shared",),
    "tide_shared": ("shared",),
    "calm": ("cross",),
    "tide_cross": ("cross",),
    "tide_shared_chunk": ("cross",),
    "reverse_tide_shared_chunk": ("cross",),
    "tide_cross_shared": ("shared",),
    "tide_shared+kl": ("shared",),
}


def test_registry_is_exactly_the_variant_table():
    assert {name: v.pipelines for name, v in VARIANTS.items()} == METHOD_MD_VARIANTS


def test_compdemo_defaults_follow_the_paper():
    tidal = {"tide_shared", "tide_shared_chunk", "reverse_tide_shared_chunk", "tide_shared+kl"}
    assert {n for n, v in VARIANTS.items() if v.compdemo} == tidal
    assert {n for n, v in VARIANTS.items() if v.uses_tidal} == tidal


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


def _token_inputs():
    g = torch.Generator().manual_seed(3)
    s = (torch.randn(7, 13, generator=g) * 2).requires_grad_()
    z = torch.randn(7, 13, generator=g) * 2
    return s, z, torch.rand(7, generator=g), torch.rand(7, generator=g)


@pytest.mark.parametrize("name", ["tide_shared+kl", "kl+reverse_kl", "tide_shared+kl+reverse_kl"])
def test_composite_equals_the_sum_of_its_terms(name):
    s, z, lam, w = _token_inputs()
    variant = get_variant(name, pipeline="shared")
    kwargs = {"lam": lam, "weight": w, "temperature": 2.0}
    total = variant.loss(s, z, **kwargs)
    parts = [VARIANTS[t].loss(s, z, **kwargs) for t in variant.terms]
    assert total.item() == pytest.approx(sum(p.item() for p in parts), rel=1e-6)
    (grad,) = torch.autograd.grad(total, s)
    expected = sum(
        torch.autograd.grad(p, s)[0]
        for p in [VARIANTS[t].loss(s, z, **kwargs) for t in variant.terms]
    )
    assert torch.allclose(grad, expected, atol=1e-6)
    assert variant.loss(s, s.detach(), **kwargs).item() == pytest.approx(0.0, abs=1e-6)


def test_composite_flags_follow_its_terms():
    published = VARIANTS["tide_shared+kl"]
    assert published.terms == ("tide_shared", "kl") and published.uses_tidal and published.compdemo
    plain = get_variant("kl+reverse_kl")
    assert not plain.uses_tidal and not plain.compdemo and plain.pipelines == ("shared",)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("kl+calm", "not a single token-level"),
        ("kl+ce", "not a single token-level"),
        ("kl+kl", "distinct"),
        ("kl+tidal", "unknown term 'tidal'"),
    ],
)
def test_bad_composites_are_refused_by_name(name, message):
    with pytest.raises(ValueError, match=message):
        get_variant(name)


def test_tide_cross_b_is_reverse_kl_on_the_shared_positions():
    s, z, lam, w = _token_inputs()
    kwargs = {"lam": lam, "weight": w, "temperature": 2.0}
    ours = VARIANTS["tide_cross_shared"].loss(s, z, **kwargs)
    assert ours.item() == pytest.approx(VARIANTS["reverse_kl"].loss(s, z, **kwargs).item())
    assert VARIANTS["tide_cross_shared"].pipelines == ("shared",)
    assert not VARIANTS["tide_cross_shared"].compdemo


def test_pipeline_defaults_are_the_published_scripts():
    from tide_lightning.method.variants import PIPELINE_DEFAULTS

    assert PIPELINE_DEFAULTS["shared"] == {"temperature": 2.0, "time_weight": "midrange"}
    assert PIPELINE_DEFAULTS["cross"] == {"temperature": 5.0, "time_weight": "uniform"}


def test_term_losses_name_each_term():
    s, z, lam, w = _token_inputs()
    kwargs = {"lam": lam, "weight": w, "temperature": 2.0}
    single = VARIANTS["kl"].term_losses(s, z, **kwargs)
    assert list(single) == ["kl"]
    assert single["kl"].item() == pytest.approx(VARIANTS["kl"].loss(s, z, **kwargs).item())
    parts = VARIANTS["tide_shared+kl"].term_losses(s, z, **kwargs)
    assert list(parts) == ["tide_shared", "kl"]
    total = VARIANTS["tide_shared+kl"].loss(s, z, **kwargs)
    assert sum(p.item() for p in parts.values()) == pytest.approx(total.item(), rel=1e-6)

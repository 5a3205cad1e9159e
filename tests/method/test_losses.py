"""Property tests and hand-worked values for the token- and chunk-level losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from tide_lightning import (
    calm_loss,
    chunk_log_probs,
    chunk_tidal_loss,
    forward_kl_loss,
    gold_log_probs,
    masked_diffusion_ce,
    reverse_calm_loss,
    reverse_kl_loss,
    tidal_loss,
)
from tide_lightning.method.losses import (
    calm_from_probs,
    kl_per_position,
    reverse_calm_from_probs,
    reverse_chunk_tidal_loss,
    rowwise,
)

LN3 = math.log(3.0)


def naive_tidal(s, z, lam, temperature, weight):
    r = torch.softmax(((1 - lam[:, None]) * s + lam[:, None] * z.float()) / temperature, -1)
    r = r.detach()
    log_q = torch.log_softmax(s / temperature, -1)
    kl = torch.where(r > 0, r * (r.log() - log_q), 0.0).sum(-1)
    return temperature**2 * (weight * kl).sum() / s.shape[0]


def naive_reverse(s, z, temperature):
    log_q = torch.log_softmax(s / temperature, -1)
    log_p = torch.log_softmax(z / temperature, -1)
    return temperature**2 * (log_q.exp() * (log_q - log_p)).sum(-1).mean()


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(9, 37, generator=g) * 3
    z = torch.randn(9, 37, generator=g) * 3
    return s, z


# -- hand-worked values (V = 2, student uniform, teacher p = [0.75, 0.25]) ---------------------


def test_forward_kl_hand_value():
    s = torch.zeros(1, 2)
    z = torch.tensor([[2 * LN3, 0.0]])  # at T = 2 the teacher is [0.75, 0.25]
    # T^2 * (0.75 ln 1.5 + 0.25 ln 0.5) = 4 * 0.1308120
    assert forward_kl_loss(s, z, temperature=2.0).item() == pytest.approx(4 * 0.13081204, abs=1e-6)


def test_reverse_kl_hand_value():
    s = torch.zeros(1, 2)
    z = torch.tensor([[LN3, 0.0]])
    # 0.5 ln(0.5 / 0.75) + 0.5 ln(0.5 / 0.25)
    assert reverse_kl_loss(s, z, temperature=1.0).item() == pytest.approx(0.14384104, abs=1e-6)


def test_tidal_hand_value():
    s = torch.zeros(2, 2)
    z = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
    lam = torch.tensor([0.5, 0.5])
    # r = softmax([ln3 / 2, 0]) = [0.6339746, 0.3660254]; KL(r || uniform) = 0.0363408
    # weights 1 and 0.5, divided by |M| = 2: (1 + 0.5) * 0.0363408 / 2
    loss = tidal_loss(s, z, lam, temperature=1.0, weight=torch.tensor([1.0, 0.5]))
    assert loss.item() == pytest.approx(1.5 * 0.03634078 / 2, abs=1e-7)


def test_masked_diffusion_ce_hand_value():
    logits = torch.zeros(1, 4, 2)  # CE = ln 2 everywhere
    x0 = torch.tensor([[0, 1, 1, 0]])
    masked = torch.tensor([[True, False, True, False]])
    maskable = torch.tensor([[True, True, True, False]])
    t = torch.tensor([0.5])
    # sum M * (1/t) * CE / sum maskable = (2 * 2 ln 2) / 3
    value = masked_diffusion_ce(logits, x0, masked, t, maskable)
    assert value.item() == pytest.approx(4 * math.log(2) / 3, abs=1e-6)


def test_calm_hand_values():
    s_lp = torch.tensor([math.log(0.5)])
    t_lp = torch.tensor([math.log(0.8)])
    assert calm_loss(s_lp, t_lp, temperature=1.0).item() == pytest.approx(math.log(2), abs=1e-6)
    # -(0.5 ln 0.8 + 0.5 ln 0.2)
    assert reverse_calm_loss(s_lp, t_lp, temperature=1.0).item() == pytest.approx(
        0.91629073, abs=1e-6
    )
    # temperature: exp(2 ln 0.5 / 2) = 0.5 again
    assert calm_loss(2 * s_lp, 2 * t_lp, temperature=2.0).item() == pytest.approx(
        math.log(2), abs=1e-6
    )


def test_chunk_tidal_hand_value():
    s_lp = torch.tensor([math.log(0.4), math.log(0.4)])
    t_lp = torch.tensor([math.log(0.8), math.log(0.8)])
    lam = torch.tensor([0.5, 0.5])
    # m = 0.6; l = -(0.6 ln 0.4 + 0.4 ln 0.6) = 0.7541047; weights 1 and 0 -> mean 0.37705
    loss = chunk_tidal_loss(s_lp, t_lp, lam, temperature=1.0, weight=torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(0.75410469 / 2, abs=1e-6)


def test_chunk_log_probs_hand_value():
    token_lp = torch.tensor([[-1.0, -2.0, -3.0, -4.0, -5.0]])
    chunk_ids = torch.tensor([[-1, 0, 0, 1, -1]])
    out = chunk_log_probs(token_lp, chunk_ids, num_chunks=3)
    assert torch.equal(out, torch.tensor([[-5.0, -4.0, 0.0]]))


# -- properties -----------------------------------------------------------------------------


def test_identical_inputs_give_zero(logits):
    s, _ = logits
    lam = torch.rand(s.shape[0])
    assert forward_kl_loss(s, s).item() == pytest.approx(0.0, abs=1e-6)
    assert reverse_kl_loss(s, s).item() == pytest.approx(0.0, abs=1e-6)
    assert tidal_loss(s, s, lam).item() == pytest.approx(0.0, abs=1e-6)


def test_tidal_limits(logits):
    s, z = logits
    n = s.shape[0]
    full = tidal_loss(s, z, torch.ones(n), temperature=2.0)
    assert full.item() == pytest.approx(forward_kl_loss(s, z, 2.0).item(), rel=1e-6)
    # lambda = 1 reproduces F.kl_div's forward KL
    ref = F.kl_div(
        F.log_softmax(s / 2, -1), F.log_softmax(z / 2, -1), log_target=True, reduction="batchmean"
    )
    assert full.item() == pytest.approx(4 * ref.item(), rel=1e-5)
    assert tidal_loss(s, z, torch.zeros(n)).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_values_and_gradients_match_naive(logits, temperature):
    s, z = logits
    lam, w = torch.rand(s.shape[0]), torch.rand(s.shape[0])
    for ours, naive in [
        (
            lambda x: tidal_loss(x, z, lam, temperature, w),
            lambda x: naive_tidal(x, z, lam, temperature, w),
        ),
        (lambda x: reverse_kl_loss(x, z, temperature), lambda x: naive_reverse(x, z, temperature)),
    ]:
        a = s.clone().requires_grad_()
        b = s.clone().requires_grad_()
        la, lb = ours(a), naive(b)
        (3.0 * la).backward()
        (3.0 * lb).backward()
        assert la.item() == pytest.approx(lb.item(), rel=1e-5, abs=1e-7)
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_row_chunking_is_invisible(logits, monkeypatch):
    s, z = logits
    lam = torch.rand(s.shape[0])
    a = s.clone().requires_grad_()
    whole = tidal_loss(a, z, lam)
    whole.backward()
    monkeypatch.setattr(rowwise, "CHUNK_ELEMENTS", 2 * s.shape[1])  # two rows per slice
    b = s.clone().requires_grad_()
    sliced = tidal_loss(b, z, lam)
    sliced.backward()
    assert sliced.item() == pytest.approx(whole.item(), rel=1e-6)
    assert torch.allclose(a.grad, b.grad, atol=1e-7)


def test_masked_ce_matches_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 11, generator=g)
    x0 = torch.randint(0, 11, (3, 6), generator=g)
    maskable = torch.rand(3, 6, generator=g) < 0.8
    masked = maskable & (torch.rand(3, 6, generator=g) < 0.5)
    t = torch.rand(3, generator=g) + 0.1
    a = logits.clone().requires_grad_()
    ours = masked_diffusion_ce(a[masked], x0, masked, t, maskable)
    ours.backward()
    b = logits.clone().requires_grad_()
    ce = F.cross_entropy(b.reshape(-1, 11), x0.reshape(-1), reduction="none").reshape(3, 6)
    ref = (masked * ce / t[:, None]).sum() / maskable.sum()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_none_masked_is_zero_and_connected():
    s = torch.randn(0, 5, requires_grad=True)
    for loss in (forward_kl_loss(s, s.detach()), reverse_kl_loss(s, s.detach())):
        assert loss.item() == 0.0 and loss.requires_grad
    x0 = torch.zeros(2, 3, dtype=torch.long)
    none = torch.zeros(2, 3, dtype=torch.bool)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    ce = masked_diffusion_ce(logits, x0, none, torch.ones(2), none)
    assert ce.item() == 0.0
    ce.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert calm_loss(torch.zeros(0), torch.zeros(0)).item() == 0.0


def test_all_masked_case():
    logits = torch.zeros(2, 4, 3)
    x0 = torch.zeros(2, 4, dtype=torch.long)
    every = torch.ones(2, 4, dtype=torch.bool)
    value = masked_diffusion_ce(logits, x0, every, torch.ones(2), every)
    assert value.item() == pytest.approx(math.log(3), abs=1e-6)


def test_bf16_inputs_give_float32_accuracy(logits):
    s, z = logits
    s16, z16 = s.bfloat16(), z.bfloat16()
    lam = torch.rand(s.shape[0])
    a = s16.clone().requires_grad_()
    loss = tidal_loss(a, z16, lam)
    loss.backward()
    ref = naive_tidal(s16.float(), z16.float(), lam, 2.0, torch.ones(s.shape[0]))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert a.grad.dtype == torch.bfloat16
    kl = kl_per_position(s16, z16)
    assert kl.dtype == torch.float32


def test_gold_log_probs_matches_log_softmax(logits, monkeypatch):
    s, _ = logits
    monkeypatch.setattr(rowwise, "CHUNK_ELEMENTS", 3 * s.shape[1])
    y = torch.arange(s.shape[0]) % s.shape[1]
    a = s.clone().requires_grad_()
    b = s.clone().requires_grad_()
    ours = gold_log_probs(a, y)
    ref = torch.log_softmax(b, -1).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(ours, ref, atol=1e-6)
    weights = torch.rand(s.shape[0])
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_reverse_calm_gradient_is_minus_logit_teacher():
    t = torch.tensor([0.8, 0.5, 0.01, 0.999])
    for s0 in (0.5, 1e-3, 1e-6):
        s = torch.full_like(t, s0, requires_grad=True)
        reverse_calm_from_probs(s, t).sum().backward()
        assert torch.allclose(s.grad, -torch.log(t / (1 - t)), atol=1e-5)
    # bounded by the clamp: |logit(t)| <= ln(1e7) = 16.1
    assert (-torch.log(t / (1 - t))).abs().max() < 16.2


def test_forward_calm_gradient_grows_as_student_vanishes():
    t = torch.tensor([0.8])
    grads = []
    for s0 in (0.5, 1e-2, 1e-4):
        s = torch.tensor([s0], requires_grad=True)
        calm_from_probs(s, t).sum().backward()
        grads.append(s.grad.abs().item())
        # (s - t) / (s (1 - s))
        assert s.grad.item() == pytest.approx((s0 - 0.8) / (s0 * (1 - s0)), rel=1e-4)
    assert grads[0] < grads[1] < grads[2]
    assert grads[2] > 1000


def test_reverse_calm_is_zero_gradient_for_uncertain_teacher():
    s_lp = torch.tensor([math.log(0.3)], requires_grad=True)
    reverse_calm_loss(s_lp, torch.tensor([math.log(0.5)]), temperature=1.0).backward()
    assert s_lp.grad.abs().item() < 1e-6


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="same shape"):
        forward_kl_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# -- reverse chunk TIDAL (published reverse_alm_taid) ------------------------------------------


def test_reverse_chunk_tidal_hand_value():
    s_lp = torch.tensor([math.log(0.4)])
    t_lp = torch.tensor([math.log(0.8)])
    # m = 0.5 * 0.4 + 0.5 * 0.8 = 0.6; l = -(0.4 ln 0.6 + 0.6 ln 0.4) = 0.7541047
    loss = reverse_chunk_tidal_loss(s_lp, t_lp, torch.tensor([0.5]), temperature=1.0)
    assert loss.item() == pytest.approx(-(0.4 * math.log(0.6) + 0.6 * math.log(0.4)), abs=1e-6)
    weighted = reverse_chunk_tidal_loss(
        s_lp.repeat(2), t_lp.repeat(2), torch.full((2,), 0.5), 1.0, torch.tensor([1.0, 0.0])
    )
    assert weighted.item() == pytest.approx(loss.item() / 2, abs=1e-6)


def test_reverse_chunk_tidal_at_lambda_one_is_reverse_calm():
    g = torch.Generator().manual_seed(1)
    s_lp, t_lp = -3 * torch.rand(8, generator=g), -3 * torch.rand(8, generator=g)
    ours = reverse_chunk_tidal_loss(s_lp, t_lp, torch.ones(8), temperature=2.0)
    assert ours.item() == pytest.approx(reverse_calm_loss(s_lp, t_lp, 2.0).item(), rel=1e-6)


def test_reverse_chunk_tidal_identical_inputs_give_zero_gradient_at_one_half():
    # With s = t the target is s itself; the gradient -logit(m) vanishes where m = 0.5.
    s_lp = torch.tensor([math.log(0.5)], requires_grad=True)
    reverse_chunk_tidal_loss(s_lp, s_lp.detach(), torch.tensor([0.3]), 1.0).backward()
    assert s_lp.grad.abs().item() < 1e-6


def test_reverse_chunk_tidal_gradient_is_bounded_as_the_student_vanishes():
    # dl/dLP = -logit(m) * s / T: bounded by ln(1e7) / T, while forward chunk TIDAL explodes.
    t_lp = torch.tensor([math.log(0.9)])
    for s0 in (1e-2, 1e-5, 1e-7):
        s_lp = torch.tensor([math.log(s0)], requires_grad=True)
        reverse_chunk_tidal_loss(s_lp, t_lp, torch.tensor([0.2]), temperature=1.0).backward()
        assert s_lp.grad.abs().item() <= math.log(1e7) + 1e-3
        s = torch.tensor([s0], requires_grad=True)
        m = (0.8 * s + 0.2 * 0.9).detach()
        reverse_calm_from_probs(s, m).sum().backward()
        assert s.grad.item() == pytest.approx(-math.log(m.item() / (1 - m.item())), rel=1e-5)


def test_reverse_chunk_tidal_without_chunks_is_zero_and_connected():
    s_lp = torch.zeros(0, requires_grad=True)
    loss = reverse_chunk_tidal_loss(s_lp, torch.zeros(0), torch.zeros(0), 5.0)
    loss.backward()
    assert loss.item() == 0.0 and s_lp.grad is not None

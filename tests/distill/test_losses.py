"""Distillation losses against closed forms, and chunked == unchunked in values and gradients."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from distill.losses import (  # noqa: E402
    IGNORE_INDEX,
    LossConfig,
    SparseTarget,
    chunked_distill_loss,
    distill_loss,
    forward_kl,
    generalized_jsd,
    reverse_kl,
)


def _bern(p: float) -> torch.Tensor:
    return torch.log(torch.tensor([[p, 1.0 - p]]))


def _kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_kl_closed_forms():
    assert forward_kl(_bern(0.3), _bern(0.6)).item() == pytest.approx(_kl(0.3, 0.6), rel=1e-6)
    assert reverse_kl(_bern(0.3), _bern(0.6)).item() == pytest.approx(_kl(0.6, 0.3), rel=1e-6)
    assert forward_kl(_bern(0.3), _bern(0.3)).item() == pytest.approx(0.0, abs=1e-7)


def test_jsd_closed_form_and_limits():
    p, q = 0.2, 0.7
    m = 0.5 * p + 0.5 * q
    expected = 0.5 * _kl(p, m) + 0.5 * _kl(q, m)
    assert generalized_jsd(_bern(p), _bern(q), 0.5).item() == pytest.approx(expected, rel=1e-6)
    # disjoint supports: JSD(0.5) is ln 2 at most
    far = generalized_jsd(torch.log(torch.tensor([[1 - 1e-9, 1e-9]])), torch.log(torch.tensor([[1e-9, 1 - 1e-9]])), 0.5)
    assert far.item() == pytest.approx(math.log(2), rel=1e-4)
    assert generalized_jsd(_bern(p), _bern(q), 0.0).item() == pytest.approx(_kl(p, q), rel=1e-6)
    assert generalized_jsd(_bern(p), _bern(q), 1.0).item() == pytest.approx(_kl(q, p), rel=1e-6)
    # β and 1-β with the roles swapped give the same value
    a = generalized_jsd(_bern(p), _bern(q), 0.3).item()
    b = generalized_jsd(_bern(q), _bern(p), 0.7).item()
    assert a == pytest.approx(b, rel=1e-6)


def _batch(seed=0, b=2, t=7, v=11, pad=2):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, t, v, generator=g, dtype=torch.float64).float() * 2
    te = torch.randn(b, t, v, generator=g).float() * 2
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, -pad:] = IGNORE_INDEX
    return s, te, labels


def test_alpha_zero_is_plain_cross_entropy():
    s, te, labels = _batch()
    loss, parts = distill_loss(s, te, labels, LossConfig(alpha=0.0))
    ref = F.cross_entropy(s.reshape(-1, s.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert parts["ce"].item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_temperature_squared_scaling(temperature):
    s, te, labels = _batch(seed=1)
    loss, _ = distill_loss(s, te, labels, LossConfig(alpha=1.0, temperature=temperature))
    mask = labels != IGNORE_INDEX
    t_logp = F.log_softmax(te[mask] / temperature, -1)
    s_logp = F.log_softmax(s[mask] / temperature, -1)
    kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="sum") / mask.sum()
    assert loss.item() == pytest.approx(temperature**2 * kl.item(), rel=1e-5)


def test_seed_convention_mixes_the_two_terms():
    s, te, labels = _batch(seed=2)
    ce, _ = distill_loss(s, te, labels, LossConfig(alpha=0.0))
    kd, _ = distill_loss(s, te, labels, LossConfig(alpha=1.0, temperature=2.0))
    mixed, _ = distill_loss(s, te, labels, LossConfig(alpha=0.3, temperature=2.0))
    assert mixed.item() == pytest.approx(0.7 * ce.item() + 0.3 * kd.item(), rel=1e-6)


def test_padding_is_masked_and_normalized_per_real_token():
    s, te, labels = _batch(seed=3, pad=3)
    loss, _ = distill_loss(s, te, labels, LossConfig())
    # garbage in padded positions changes nothing
    s2, te2 = s.clone(), te.clone()
    s2[0, -3:] = 1e4
    te2[0, -3:] = -1e4
    loss2, _ = distill_loss(s2, te2, labels, LossConfig())
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
    # normalized by real tokens: the mean of per-token losses, not of per-sequence means
    mask = labels != IGNORE_INDEX
    per_tok = [
        distill_loss(s[i, j][None], te[i, j][None], labels[i, j][None])[0].item() for i, j in mask.nonzero().tolist()
    ]
    assert loss.item() == pytest.approx(sum(per_tok) / len(per_tok), rel=1e-5)


def test_all_padding_gives_zero_and_keeps_the_graph():
    s, te, labels = _batch()
    s.requires_grad_(True)
    labels[:] = IGNORE_INDEX
    loss, _ = distill_loss(s, te, labels)
    loss.backward()
    assert loss.item() == 0.0 and s.grad is not None and s.grad.abs().sum() == 0


def test_vocab_mismatch_keeps_the_shared_prefix_and_renormalizes():
    s, te, labels = _batch(seed=4, v=12)
    wide = torch.cat([te, torch.randn(*te.shape[:2], 4) + 5.0], dim=-1)  # 16 teacher tokens vs 12 student
    a, _ = distill_loss(s, wide, labels, LossConfig(alpha=1.0))
    b, _ = distill_loss(s, te, labels, LossConfig(alpha=1.0))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def _sparse_from_dense(te: torch.Tensor, k: int) -> SparseTarget:
    logp = F.log_softmax(te.float(), -1)
    top, ids = logp.topk(k, dim=-1)
    rest = (1 - top.exp().sum(-1)).clamp(min=0)
    return SparseTarget(top.half(), ids, rest)


def test_sparse_target_with_full_k_matches_dense():
    s, te, labels = _batch(seed=5, v=9)
    dense, _ = distill_loss(s, te, labels, LossConfig(alpha=1.0))
    sparse, _ = distill_loss(s, _sparse_from_dense(te, 9), labels, LossConfig(alpha=1.0))
    assert sparse.item() == pytest.approx(dense.item(), rel=2e-3)  # fp16 storage


def test_sparse_target_is_a_lower_bound_on_the_dense_kl():
    s, te, labels = _batch(seed=6, v=50)
    dense, _ = distill_loss(s, te, labels, LossConfig(alpha=1.0))
    for k in (1, 5, 20):
        sparse, _ = distill_loss(s, _sparse_from_dense(te, k), labels, LossConfig(alpha=1.0))
        assert 0 <= sparse.item() <= dense.item() + 1e-3


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("chunk", [1, 3, 5, None])
def test_chunked_equals_unchunked_values_and_gradients(divergence, chunk):
    torch.manual_seed(0)
    b, t, h, v = 2, 6, 8, 13
    hidden = torch.randn(b, t, h, requires_grad=True)
    head = torch.randn(v, h, requires_grad=True)
    t_hidden = torch.randn(b * t, h)
    t_head = torch.randn(v + 2, h)  # teacher with a wider vocab
    labels = torch.randint(0, v, (b, t))
    labels[1, :2] = IGNORE_INDEX
    cfg = LossConfig(alpha=0.5, temperature=1.5, divergence=divergence, beta=0.3, chunk_size=chunk)

    ref, ref_parts = distill_loss(hidden @ head.t(), (t_hidden @ t_head.t()).reshape(b, t, -1), labels, cfg)
    ref.backward()
    g_hidden, g_head = hidden.grad.clone(), head.grad.clone()
    hidden.grad = head.grad = None

    got, parts = chunked_distill_loss(hidden, head, lambda s: t_hidden[s] @ t_head.t(), labels, cfg)
    got.backward()
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert parts["div"].item() == pytest.approx(ref_parts["div"].item(), rel=1e-5)
    torch.testing.assert_close(hidden.grad, g_hidden, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.grad, g_head, rtol=1e-4, atol=1e-6)


def test_chunked_sparse_equals_unchunked():
    torch.manual_seed(1)
    hidden = torch.randn(10, 4, requires_grad=True)
    head = torch.randn(20, 4, requires_grad=True)
    labels = torch.randint(0, 20, (10,))
    target = _sparse_from_dense(torch.randn(10, 20), 5)
    cfg = LossConfig(chunk_size=3)
    ref, _ = distill_loss(hidden @ head.t(), target, labels, cfg)
    got, _ = chunked_distill_loss(hidden, head, lambda s: target[s], labels, cfg)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_global_token_count_normalization():
    s, te, labels = _batch(seed=7)
    hidden = s.reshape(-1, s.shape[-1])
    eye = torch.eye(s.shape[-1])
    n = int((labels != IGNORE_INDEX).sum())
    a, _ = chunked_distill_loss(
        hidden, eye, lambda sl: te.reshape(-1, te.shape[-1])[sl], labels, LossConfig(), n_tokens=2 * n
    )
    b, _ = distill_loss(s, te, labels, LossConfig())
    assert a.item() == pytest.approx(b.item() / 2, rel=1e-6)


def test_bad_config_is_refused():
    for bad in (dict(alpha=1.5), dict(temperature=0), dict(divergence="kl"), dict(beta=-0.1), dict(chunk_size=0)):
        with pytest.raises(ValueError):
            LossConfig(**bad)

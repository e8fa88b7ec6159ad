"""The CPU dropout mask (``autopeft.kernels.dropout``) against its definition and against torch's dropout.

    dropout(x, p) = x ⊙ m / q,   m_i ~ Bernoulli(q) independently,   q = 1 - round(p * 65536) / 65536
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autopeft import kernels
from autopeft.kernels import Dropout, FusedDropout, dropout, fused_kernels
from autopeft.kernels.cpu_dropout import keep_mask, keep_probability


def test_keep_probability_is_p_rounded_to_sixteen_bits():
    assert keep_probability(0.1) == 1 - 6554 / 65536
    assert keep_probability(0.5) == 0.5
    assert abs(keep_probability(0.1) - 0.9) < 2**-16


@pytest.mark.parametrize("p", [0.02, 0.1, 0.5, 0.9])
def test_mask_rate_in_every_int16_lane(p):
    """Each int16 lane of a 64-bit draw is uniform: every position mod 4 is kept at the same rate (within 5 sigma).
    With 63 random bits (``random_()`` without a range) the top lane would be kept far more often."""
    torch.manual_seed(0)
    n = 400_000
    mask = keep_mask((n,), p)
    q = keep_probability(p)
    sigma = math.sqrt(q * (1 - q) / (n / 4))
    for lane in range(4):
        rate = mask[lane::4].double().mean().item()
        assert abs(rate - q) < 5 * sigma, (lane, rate, q)


def test_neighbouring_elements_are_uncorrelated():
    torch.manual_seed(1)
    m = keep_mask((400_000,), 0.3).double()
    a, b = m[:-1] - m.mean(), m[1:] - m.mean()
    corr = (a * b).mean() / m.var()
    assert abs(corr.item()) < 5 / math.sqrt(m.numel())


@pytest.mark.parametrize("shape", [(7,), (3, 5, 11), (2, 4, 6, 6)])
@pytest.mark.parametrize("p", [0.1, 0.37])
def test_output_and_gradient_are_the_seeded_mask_scaled(shape, p):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g, requires_grad=True)
    dy = torch.randn(shape, generator=g)
    torch.manual_seed(5)
    y = dropout(x, p, True)
    (dx,) = torch.autograd.grad(y, x, dy)
    torch.manual_seed(5)
    mask = keep_mask(shape, p)
    q = keep_probability(p)
    torch.testing.assert_close(y, x.detach() * mask / q, rtol=1e-6, atol=0)
    torch.testing.assert_close(dx, dy * mask / q, rtol=1e-6, atol=0)
    assert 0 < mask.sum() < mask.numel() or mask.numel() < 10


def test_the_output_is_unbiased():
    torch.manual_seed(3)
    x = torch.ones(1_000_000)
    y = dropout(x, 0.1, True)
    assert abs(y.mean().item() - 1.0) < 5 * math.sqrt(0.1 / 0.9 / x.numel())
    values = y.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / keep_probability(0.1))


def test_same_seed_same_mask_and_another_seed_another():
    x = torch.randn(64, 32)
    torch.manual_seed(9)
    a = dropout(x, 0.2)
    torch.manual_seed(9)
    b = dropout(x, 0.2)
    torch.manual_seed(10)
    c = dropout(x, 0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bfloat16_keeps_its_dtype():
    torch.manual_seed(4)
    x = torch.randn(16, 8, dtype=torch.bfloat16, requires_grad=True)
    y = dropout(x, 0.25)
    y.sum().backward()
    assert y.dtype == x.grad.dtype == torch.bfloat16
    assert torch.equal((y != 0), (x.grad != 0))


def test_torch_dropout_where_the_mask_does_not_apply():
    """Eval mode, p = 0 and p = 1 and ``fused_kernels(False)`` are torch's dropout, random stream included."""
    x = torch.randn(32, 16)
    assert torch.equal(dropout(x, 0.3, training=False), x)
    assert torch.equal(dropout(x, 0.0), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    torch.manual_seed(6)
    with fused_kernels(False):
        ours = dropout(x, 0.3)
    torch.manual_seed(6)
    assert torch.equal(ours, nn.functional.dropout(x, 0.3, True))


def test_dropout_module_is_an_nn_dropout():
    m = Dropout(0.3)
    assert isinstance(m, nn.Dropout) and m.p == 0.3
    x = torch.randn(10, 10)
    assert torch.equal(m.eval()(x), x)
    torch.manual_seed(7)
    y = m.train()(x)
    torch.manual_seed(7)
    assert torch.equal(y, FusedDropout.apply(x, 0.3))
    assert kernels.dropout is dropout

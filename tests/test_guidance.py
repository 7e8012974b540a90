"""The guidance rule (paper Eq. 9) on random tensors: the identities of REFERENCE section 1."""

import pytest
import torch

from dipsy_ui.diffusion.pipeline import dipsy_guidance


@pytest.fixture
def eps():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64) for _ in range(4)]


def test_zero_image_weights_is_text_cfg(eps):
    eps_u, eps_t, eps_tp, eps_tpn = eps
    expected = eps_u + 7.5 * (eps_t - eps_u)
    assert torch.allclose(dipsy_guidance(eps_u, eps_t, eps_tp, eps_tpn, 7.5, 0.0, 0.0), expected)


def test_equal_text_and_image_weight_without_negative_is_image_cfg(eps):
    eps_u, eps_t, eps_tp, eps_tpn = eps
    expected = eps_u + 4.0 * (eps_tp - eps_u)
    assert torch.allclose(dipsy_guidance(eps_u, eps_t, eps_tp, eps_tpn, 4.0, 4.0, 0.0), expected)


def test_negative_weight_is_subtracted(eps):
    eps_u, eps_t, eps_tp, eps_tpn = eps
    without = dipsy_guidance(eps_u, eps_t, eps_tp, eps_tpn, 7.5, 6.0, 0.0)
    with_neg = dipsy_guidance(eps_u, eps_t, eps_tp, eps_tpn, 7.5, 6.0, 2.0)
    assert torch.allclose(with_neg - without, -2.0 * (eps_tpn - eps_tp))


def test_identical_branches_give_the_unconditional_prediction(eps):
    eps_u = eps[0]
    assert torch.equal(dipsy_guidance(eps_u, eps_u, eps_u, eps_u, 7.5, 6.0, 6.0), eps_u)


def test_linear_in_each_weight_and_per_image_weights_broadcast(eps):
    eps_u, eps_t, eps_tp, eps_tpn = eps
    weights = torch.tensor([1.0, 3.0], dtype=torch.float64).view(2, 1, 1, 1)
    batched = dipsy_guidance(eps_u, eps_t, eps_tp, eps_tpn, 7.5, weights, 6.0)
    for row, w in enumerate((1.0, 3.0)):
        single = dipsy_guidance(eps_u[row], eps_t[row], eps_tp[row], eps_tpn[row], 7.5, w, 6.0)
        assert torch.allclose(batched[row], single)

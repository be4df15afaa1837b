"""BitLinear (BitNet b1.58): quantiser values on hand-made inputs, the output formula, STE gradients."""
import pytest
import torch
from torch import nn

from gatelab.core.config import parse
from gatelab.core.errors import ConfigError
from gatelab.quant import BitLinear, BitLinearConfig, fake_quant_activations, quantize_activations, ternarize


def test_ternarize_hand_example():
    w = torch.tensor([[0.9, -0.2, 0.05], [-1.5, 0.4, 0.0]], dtype=torch.float64)
    w_q, gamma = ternarize(w, eps=0.0)
    assert gamma.item() == pytest.approx(3.05 / 6)  # mean |W|
    # W / γ = [1.770, -0.393, 0.098; -2.951, 0.787, 0]: round, then clip to [-1, 1]
    assert w_q.tolist() == [[1, 0, 0], [-1, 1, 0]]


def test_ternarize_eps_keeps_zero_weight_finite():
    w_q, gamma = ternarize(torch.zeros(2, 3))
    assert gamma.item() == 0 and torch.equal(w_q, torch.zeros(2, 3))


def test_activation_quantiser_hand_example():
    x = torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    x_q, eta = quantize_activations(x, bits=8)
    assert eta.squeeze(-1).tolist() == [1.0, 1e-5]  # per-token max|x|, bounded below by eps
    # x * 127 / 1 = [127, -63.5, 31.75, 0] -> round half to even: [127, -64, 32, 0]
    assert x_q.tolist() == [[127, -64, 32, 0], [0, 0, 0, 0]]
    x_q3, _ = quantize_activations(torch.tensor([[3.0, -1.4, 1.6]]), bits=3)  # Q = 3
    assert x_q3.tolist() == [[3, -1, 2]]


def test_forward_is_the_bitnet_formula():
    torch.manual_seed(0)
    layer = BitLinear(6, 5, bias=True).double()
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    w_q, gamma = ternarize(layer.weight.detach())
    x_q, eta = quantize_activations(x, bits=8)
    expected = (x_q @ w_q.T) * gamma * eta / 127 + layer.bias.detach()  # y = (x_q W_qᵀ)·γ·η/Q + b
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_act_bits_zero_keeps_activations():
    torch.manual_seed(0)
    layer = BitLinear(6, 5, bias=False, cfg=BitLinearConfig(act_bits=0)).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    w_q, gamma = ternarize(layer.weight.detach())
    torch.testing.assert_close(layer(x), x @ (gamma * w_q).T, rtol=0, atol=1e-12)


def test_straight_through_gradients_are_identity():
    torch.manual_seed(0)
    layer = BitLinear(6, 5, bias=False).double()
    x = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    g_out = torch.randn(7, 5, dtype=torch.float64)
    layer(x).backward(g_out)
    w_q, gamma = ternarize(layer.weight.detach())
    x_deq = fake_quant_activations(x.detach(), 8)
    # STE: dL/dW = g_outᵀ x̂ (the quantised input) and dL/dx = g_out (γ W_q), as if both were identities
    torch.testing.assert_close(layer.weight.grad, g_out.T @ x_deq, rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, g_out @ (gamma * w_q), rtol=0, atol=1e-12)


def test_from_linear_copies_weights_and_flags_without_drawing_random_numbers():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4, bias=True)
    lin.is_residual_out = True
    state = torch.get_rng_state()
    bit = BitLinear.from_linear(lin)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(bit.weight, lin.weight) and torch.equal(bit.bias, lin.bias)
    assert bit.is_residual_out and bit.weight.data_ptr() != lin.weight.data_ptr()


@pytest.mark.parametrize("opts, key", [({"act_bits": 1}, "act_bits"), ({"act_bits": 17}, "act_bits"),
                                       ({"eps": 0.0}, "eps")])
def test_config_errors(opts, key):
    with pytest.raises(ConfigError, match=key):
        parse(BitLinearConfig, opts)

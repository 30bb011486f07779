import numpy as np
import pytest
import torch

from tilelli.infer.weights import quantized_weight
from tilelli.model.config import TernaryOptions
from tilelli.model.pathways.conv import CausalConv
from tilelli.model.quantizer import absmean_scale, learned_scale
from tilelli.model.ternary import (
    TernaryEmbedding,
    TernaryLinear,
    hadamard_rotate,
    int8_product,
    quantize_int8,
    ternarize,
    use_int8_inputs,
)

Q = TernaryOptions(quantize=True)


def test_ternarize_values_per_tensor_and_per_row():
    torch.manual_seed(0)
    w = torch.randn(6, 10)
    q = ternarize(w)
    alpha = w.abs().mean()
    assert set(torch.unique(q / alpha).round().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.allclose(q.abs().unique(), torch.tensor([0.0, alpha.item()]), atol=0)
    qr = ternarize(w, per_row=True)
    for row, qrow in zip(w, qr, strict=False):
        vals = set(qrow.tolist())
        a = row.abs().mean().item()
        assert vals <= {-a, 0.0, a}


def test_ternarize_matches_definition():
    w = torch.tensor([[0.1, -0.5, 1.2, 0.0, -2.0]])
    alpha = w.abs().mean()
    expected = alpha * torch.clamp(torch.round(w / alpha), -1, 1)
    assert torch.equal(ternarize(w), expected)


@pytest.mark.parametrize("opts", [Q, TernaryOptions(quantize=True, per_row=True),
                                  TernaryOptions(quantize=True, hadamard=True)])
def test_ste_gradient_equals_fp32_gradient_of_quantized_weight(opts):
    """d loss / d latent == d loss / d W for an FP32 layer whose weight is the quantized one."""
    torch.manual_seed(0)
    layer = TernaryLinear(16, 8, opts)
    x = torch.randn(4, 16)
    layer(x).square().sum().backward()
    w_q = layer.effective_weight().detach().requires_grad_()
    torch.nn.functional.linear(x, w_q).square().sum().backward()
    g_fp = w_q.grad
    if opts.hadamard:  # the latent sits before the rotation: gradient rotated back
        g_fp = hadamard_rotate(hadamard_rotate(g_fp))
    assert torch.allclose(layer.weight.grad, g_fp, atol=1e-6)


def test_quantize_off_is_the_fp32_layer():
    torch.manual_seed(0)
    layer = TernaryLinear(16, 8, TernaryOptions(quantize=False))
    x = torch.randn(3, 16)
    assert torch.equal(layer(x), x @ layer.weight.T)


def test_hadamard_leaves_fp32_outputs_unchanged():
    torch.manual_seed(0)
    plain = TernaryLinear(320, 64, TernaryOptions())  # 320 = 5 blocks of 64
    rot = TernaryLinear(320, 64, TernaryOptions(hadamard=True))
    rot.load_state_dict(plain.state_dict())
    x = torch.randn(5, 320)
    assert torch.allclose(plain(x), rot(x), atol=1e-5)
    assert not torch.equal(rot.effective_weight(), plain.weight)  # it did rotate and back


def test_hadamard_changes_what_gets_quantized():
    torch.manual_seed(0)
    a = TernaryLinear(64, 16, Q)
    b = TernaryLinear(64, 16, TernaryOptions(quantize=True, hadamard=True))
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(a.effective_weight(), b.effective_weight())


def test_lsq_scale_receives_gradient_and_values_are_ternary():
    torch.manual_seed(0)
    layer = TernaryLinear(16, 8, TernaryOptions(quantize=True, lsq=True, per_row=True))
    x = torch.randn(4, 16)
    layer(x).square().sum().backward()
    assert layer.scale.grad is not None and layer.scale.grad.abs().sum() > 0
    assert layer.weight.grad.abs().sum() > 0
    w = layer.effective_weight().detach()
    for row, s in zip(w, layer.scale.detach().abs().reshape(-1), strict=False):
        assert set(row.tolist()) <= {-s.item(), 0.0, s.item()}


def test_effective_weight_cache_follows_updates():
    layer = TernaryLinear(8, 4, Q)
    with torch.no_grad():
        w1 = layer.effective_weight()
        layer.weight.mul_(3.0)
        w2 = layer.effective_weight()
    assert not torch.equal(w1, w2)


def test_causal_conv_is_causal_and_incremental_matches():
    torch.manual_seed(0)
    conv = CausalConv(6, 5, Q)
    x = torch.randn(2, 20, 6)
    full = conv(x)
    x2 = x.clone()
    x2[:, 10:] += 1.0
    assert torch.equal(conv(x2)[:, :10], full[:, :10])  # no peeking ahead
    cache = conv.init_cache(2, 20, torch.device("cpu"))
    steps = [conv(x[:, :7], cache)] + [conv(x[:, t:t + 1], cache) for t in range(7, 20)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-6)


def test_embedding_quantized_rows():
    emb = TernaryEmbedding(256, 16, TernaryOptions(quantize=True, per_row=True), std=0.25)
    out = emb(torch.tensor([[3, 7]]))
    for vec in out[0]:
        assert len(set(vec.abs().tolist()) - {0.0}) == 1


@pytest.mark.parametrize("opts", [Q, TernaryOptions(quantize=True, per_row=True),
                                  TernaryOptions(quantize=True, lsq=True)],
                         ids=["per-tensor", "per-row", "lsq"])
def test_one_quantizer_for_training_and_the_engine(opts):
    """The engine's loader (numpy, no torch) and training (torch) call the same quantizer: an
    unpacked ternary weight gives the trits the model trained with, and its scale up to the float32
    rounding of the mean (numpy and torch sum in different orders)."""
    torch.manual_seed(0)
    layer = TernaryLinear(70, 24, opts)
    with torch.no_grad():
        layer.weight[0] = 0.0  # an all-zero row: scale EPS per row, trits 0
        w = layer.weight.numpy().copy()
    if opts.lsq:
        scale = learned_scale(layer.scale.detach().numpy()).reshape(-1, 1)
    else:
        scale = absmean_scale(w, opts.per_row)
        np.testing.assert_allclose(scale, absmean_scale(layer.weight.detach(), opts.per_row).numpy(), rtol=1e-6)
    engine = quantized_weight(w, scale).dense()
    trained = layer.effective_weight().detach().numpy()
    assert np.array_equal(np.sign(engine), np.sign(trained))  # the same trits
    np.testing.assert_allclose(engine, trained, rtol=1e-6, atol=0)


def test_int8_product_is_integer_arithmetic():
    """q = rint(x * 127 / max|x|) per row (a zero row gives zeros), and q @ trits^T summed in
    int64 then scaled gives exactly what int8_product returns (float32 holds the sums)."""
    torch.manual_seed(0)
    x = torch.randn(5, 300) * torch.tensor([[1.0], [1e-3], [0.0], [50.0], [1.0]])
    trits, scale = torch.randint(-1, 2, (7, 300)).float(), torch.tensor([0.3])
    q, sx = quantize_int8(x)
    assert q[2].abs().max() == 0 and q.abs().max() == 127 and torch.equal(q, q.round())
    assert torch.equal(q.abs().amax(dim=1), torch.tensor([127.0, 127, 0, 127, 127]))
    acc = q.numpy().astype(np.int64) @ trits.numpy().astype(np.int64).T  # (5, 7)
    want = acc.astype(np.float32) * (sx.numpy() * np.float32(0.3))
    assert np.array_equal(int8_product(x, trits, scale).numpy(), want)
    assert not np.allclose(want, (x @ trits.T * 0.3).numpy(), atol=1e-4)  # it is an approximation


def test_use_int8_inputs_turns_quantized_linear_layers_only():
    from conftest import tiny

    from tilelli.model.models import build_model

    ternary, fp32 = build_model(tiny("tilelli-lite-ternary")), build_model(tiny("tilelli-lite-fp32"))
    n = use_int8_inputs(ternary)
    assert n == 4 * ternary.config.n_layers + 1 and use_int8_inputs(fp32) == 0  # qkv, proj, up, down; head
    assert use_int8_inputs(ternary, on=False) == n
    assert not any(getattr(m, "int8_inputs", False) for m in ternary.modules())

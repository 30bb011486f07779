"""Parameter roles (Muon / AdamW with and without weight decay) and the LR schedule."""

import pytest
import torch

from tilelli.model.config import from_name
from tilelli.model.models import build_model
from tilelli.model.pathways.conv import CausalConv
from tilelli.model.ternary import TernaryModule
from tilelli.train.optim import Muon, build_optimizers, lr_at, newton_schulz, param_roles

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 4, "d_head": 8, "max_seq_len": 64}


def tiny(name: str, **extra):
    torch.manual_seed(0)
    return build_model(from_name(name, **TINY, **extra))


@pytest.mark.parametrize("name, extra", [("tilelli-lite-ternary", {"lsq": True}), ("tilelli-fp32", {"n_banks": 2}),
                                         ("vanilla-fp32", {})])
def test_every_parameter_has_exactly_one_role(name, extra):
    model = tiny(name, **extra)
    roles = param_roles(model)
    ids = [id(p) for ps in roles.values() for p in ps]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    role_of = {id(p): role for role, ps in roles.items() for p in ps}
    in_blocks = {id(p) for p in model.blocks.parameters()}
    assert all(p.ndim == 2 and id(p) in in_blocks for p in roles["matrix"])
    assert all(p.ndim == 2 for p in roles["decay"])
    assert role_of[id(model.tok_emb.weight)] == role_of[id(model.head.weight)] == "decay"
    assert role_of[id(model.pos_emb)] == "decay"
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            assert role_of[id(m.weight)] == role_of[id(m.bias)] == "no_decay"
        if isinstance(m, CausalConv):
            assert role_of[id(m.weight)] == "no_decay"  # 3-D kernel
        if isinstance(m, TernaryModule) and hasattr(m, "scale") and isinstance(m.scale, torch.nn.Parameter):
            assert role_of[id(m.scale)] == "no_decay"  # LSQ step size
    for block in model.blocks:
        if hasattr(block, "router"):
            assert role_of[id(block.router.weight)] == "decay" and role_of[id(block.router.bias)] == "no_decay"
    assert roles["matrix"]


def test_optimizers_split_as_documented():
    model = tiny("tilelli-fp32")
    roles = param_roles(model)
    (adamw,) = build_optimizers(model, "adamw", lr=1e-3, weight_decay=0.1)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]
    assert len(adamw.param_groups[0]["params"]) == len(roles["matrix"]) + len(roles["decay"])
    muon, adamw = build_optimizers(model, "muon", lr=1e-3, weight_decay=0.1)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert {id(p) for p in muon.param_groups[0]["params"]} == {id(p) for p in roles["matrix"]}
    assert muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build_optimizers(model, "sgd", lr=1e-3, weight_decay=0.1)


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_both_optimizers_fit_a_fixed_batch(name):
    model = tiny("tilelli-lite-fp32")
    optimizers = build_optimizers(model, name, lr=3e-3, weight_decay=0.1)
    x = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(15):
        loss = model(x[:, :-1], x[:, 1:]).loss
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_lr_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    lr, min_lr, warmup, total = 1.0, 0.1, 10, 111  # cosine over updates 10..110
    sched = [lr_at(s, lr, min_lr, warmup, total) for s in range(total)]
    assert sched[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert sched[warmup] == pytest.approx(lr) and sched[-1] == pytest.approx(min_lr)
    assert sched[warmup + 50] == pytest.approx(min_lr + (lr - min_lr) / 2)  # half-way down the cosine
    assert all(a >= b for a, b in zip(sched[warmup:], sched[warmup + 1:], strict=False))
    assert lr_at(500, lr, min_lr, warmup, total) == pytest.approx(min_lr)  # past the end: stays at min
    assert lr_at(0, lr, min_lr, 0, 1) == pytest.approx(lr)  # no warm-up, a single step


def test_newton_schulz_in_bf16_is_torchs_and_fp32_orthogonalises():
    from torch.optim._muon import _zeropower_via_newtonschulz

    g = torch.randn(48, 80, generator=torch.Generator().manual_seed(0))
    coeffs = (3.4445, -4.7750, 2.0315)
    for m in (g, g.T):  # wide and tall
        ours = newton_schulz(m, coeffs, 5, 1e-7, torch.bfloat16)
        assert torch.equal(ours, _zeropower_via_newtonschulz(m, coeffs, 5, 1e-7))
        s = torch.linalg.svdvals(newton_schulz(m, coeffs, 5, 1e-7, torch.float32))
        assert 0.5 < s.min() and s.max() < 1.3  # ~U V^T: singular values near 1, as Muon intends


def test_our_muon_follows_torchs_update_rule():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(32, 64))
    b = torch.nn.Parameter(a.detach().clone())
    start = a.detach().clone()
    ours = Muon([a], lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    theirs = torch.optim.Muon([b], lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for step in range(3):
        grad = torch.randn(32, 64, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
    assert torch.equal(ours.state[a]["momentum_buffer"], theirs.state[b]["momentum_buffer"])
    moved = (b.detach() - start).abs().mean()
    assert (a - b).abs().max() < 0.05 * moved  # FP32 vs bf16 orthogonalisation: same step, finer rounding
    assert ours.state_dict()["state"].keys() == theirs.state_dict()["state"].keys()

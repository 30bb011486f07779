import ast
from pathlib import Path

import pytest
import torch
from conftest import tiny

import tilelli.model
from tilelli.errors import TilelliError
from tilelli.model.config import from_name, list_configs
from tilelli.model.models import build_model

# Pinned parameter counts of the named configs: a change here is an architecture change.
PARAMS = {
    "tilelli-lite-fp32": 10_675_864,
    "tilelli-lite-ternary": 10_675_864,
    "tilelli-fp32": 10_845_219,
    "tilelli-ternary": 10_845_219,
    "vanilla-fp32": 10_660_480,
}


def count(name: str) -> int:
    with torch.device("meta"):
        return build_model(from_name(name)).num_params()


def test_every_named_config_is_pinned_and_about_10m():
    assert set(list_configs()) == set(PARAMS)
    for name, n in PARAMS.items():
        assert count(name) == n, name
        assert 9.5e6 <= n <= 11e6, name


def test_vanilla_within_2_percent_of_lite():
    lite, vanilla = count("tilelli-lite-fp32"), count("vanilla-fp32")
    assert abs(vanilla - lite) / lite < 0.02


def test_unknown_config_names_the_known_ones():
    with pytest.raises(TilelliError, match="unknown model 'tilelli-lit'; known: tilelli-lite-fp32"):
        from_name("tilelli-lit")


def test_invalid_config_values_raise():
    with pytest.raises(TilelliError, match="not divisible by n_heads"):
        from_name("tilelli-lite-fp32", d_model=100, n_heads=8)
    with pytest.raises(TilelliError, match="skip_mode"):
        from_name("tilelli-fp32", skip_mode="sometimes")
    with pytest.raises(TilelliError, match="3 or 5"):
        from_name("tilelli-fp32", n_pathways=4)
    with pytest.raises(TilelliError, match="n_banks"):
        from_name("tilelli-fp32", n_banks=0)
    with pytest.raises(TilelliError, match=r"dropout=1.0 must be in \[0, 1\)"):
        from_name("tilelli-lite-fp32", dropout=1.0)


def stepwise_logits(model, idx, prompt_len):
    state = model.init_state(idx.shape[0], idx.shape[1])
    parts = [model(idx[:, :prompt_len], state=state).logits]
    parts += [model(idx[:, t:t + 1], state=state).logits for t in range(prompt_len, idx.shape[1])]
    return torch.cat(parts, 1)


def assert_parity(cfg, T=96, prompt_len=30, reference=None):
    """Prompt in one pass, then one byte per step == full forward (atol 1e-4)."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    idx = torch.randint(0, 256, (2, T))
    with torch.no_grad():
        full = build_model(reference).eval() if reference else model
        if reference:
            full.load_state_dict(model.state_dict())
        expected = full(idx).logits
        got = stepwise_logits(model, idx, prompt_len)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


@pytest.mark.parametrize("quantize", [False, True])
def test_cached_generation_parity_every_config(config_name, quantize):
    # prompt of 30 > top_k (16) and > the conv kernels (5, 21); 66 more single steps
    assert_parity(tiny(config_name, quantize=quantize))


@pytest.mark.parametrize("opt", ["per_row", "hadamard", "lsq", "fp_attention"])
def test_parity_with_ternary_options(opt):
    assert_parity(tiny("tilelli-ternary", **{opt: True}))


@pytest.mark.parametrize("mode", ["per_call", "per_token"])
def test_parity_with_skipping(mode):
    # threshold 0.35 with 5 pathways (mean weight 0.2): pathways do get skipped
    cfg = tiny("tilelli-fp32", skip_threshold=0.35, skip_mode=mode)
    model = build_model(cfg).eval()
    with torch.no_grad():  # a router that really prefers some pathways on some tokens
        for b in model.blocks:
            b.router.weight.normal_(std=1.0)
    torch.manual_seed(0)
    idx = torch.randint(0, 256, (1, 80))  # batch 1: a per_call "call" is then one token
    with torch.no_grad():
        got = stepwise_logits(model, idx, 1)
        per_token = build_model(cfg.replace(skip_mode="per_token")).eval()
        per_token.load_state_dict(model.state_dict())
        expected = per_token(idx).logits
        # skipping really changed the output compared with no skipping
        no_skip = build_model(cfg.replace(skip_threshold=0.0)).eval()
        no_skip.load_state_dict(model.state_dict())
        assert not torch.allclose(no_skip(idx).logits, expected, atol=1e-3)
    # one token per call: per_call decisions are per token, so both modes equal per_token
    assert torch.allclose(got, expected, atol=1e-4)


def test_per_call_skip_drops_a_pathway_that_never_reaches_threshold():
    cfg = tiny("tilelli-fp32", skip_threshold=0.5, n_layers=1)
    model = build_model(cfg).eval()
    block = model.blocks[0]
    calls = []
    for name, banks in block.paths.items():
        banks[0].register_forward_hook(lambda *_, n=name: calls.append(n))
    with torch.no_grad():
        block.router.weight.zero_()
        block.router.bias.copy_(torch.tensor([5.0, 0, 0, 0, 0]))  # 'local' gets ~0.97
        model(torch.randint(0, 256, (1, 20)))
    assert calls == ["local"]
    model.train()
    calls.clear()
    model(torch.randint(0, 256, (1, 20)))
    assert calls == list(block.names)  # training never skips


@pytest.mark.parametrize("n_banks,top_k_routing", [(3, 0), (1, 2), (2, 3)])
def test_parity_banks_and_top_k_routing(n_banks, top_k_routing):
    assert_parity(tiny("tilelli-ternary", n_banks=n_banks, top_k_routing=top_k_routing))


def test_top_k_routing_keeps_k_weights():
    cfg = tiny("tilelli-fp32", top_k_routing=2, n_layers=1, skip_threshold=0.0)
    model = build_model(cfg)
    block = model.blocks[0]
    seen = {}
    for name, banks in block.paths.items():
        banks[0].register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o))
    x = torch.randn(1, 12, 32)
    out, _ = block(x)
    h = block.norm(x)
    w = block.router(h).softmax(-1)
    top = w.topk(2, -1)
    keep = torch.zeros_like(w).scatter(-1, top.indices, top.values)
    keep = keep / keep.sum(-1, keepdim=True)
    expected = x + sum(keep[..., i:i + 1] * seen[n] for i, n in enumerate(block.names))
    assert torch.allclose(out, expected, atol=1e-6)


def test_banks_multiply_parameters():
    def pathway_params(cfg):
        return sum(p.numel() for n, p in build_model(cfg).named_parameters() if ".paths." in n)

    assert pathway_params(tiny("tilelli-fp32", n_banks=3)) == 3 * pathway_params(tiny("tilelli-fp32"))


@pytest.mark.parametrize("name", ["tilelli-lite-ternary", "tilelli-ternary", "vanilla-fp32"])
def test_gradients_reach_every_pathway_and_router_in_5_steps(name):
    torch.manual_seed(0)
    cfg = tiny(name, n_banks=2) if name == "tilelli-ternary" else tiny(name)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.randint(0, 256, (4, 65))
    losses = []
    for _ in range(5):
        out = model(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        out.loss.backward()
        for p_name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), p_name
            if ".paths." in p_name or ".router." in p_name:
                assert p.grad.abs().sum() > 0, p_name
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]


def test_router_entropy_and_aux_loss_exposed():
    model = build_model(tiny("tilelli-lite-fp32"))
    out = model(torch.randint(0, 256, (2, 10)), torch.randint(0, 256, (2, 10)))
    ent = out.router_entropy()
    assert ent.shape == (2, 2, 10)  # (layers, B, T)
    assert (ent >= 0).all() and (ent <= torch.log(torch.tensor(3.0)) + 1e-6).all()
    assert out.aux_loss >= 0 and torch.isclose(out.loss, out.ce_loss + out.aux_loss)


def test_router_entropy_loss_adds_weight_times_mean_entropy_and_sharpens_routing():
    idx, tgt = torch.randint(0, 256, (2, 10)), torch.randint(0, 256, (2, 10))
    torch.manual_seed(0)
    plain = build_model(tiny("tilelli-lite-fp32"))
    torch.manual_seed(0)
    meta = build_model(tiny("tilelli-lite-fp32", router_entropy_weight=0.5))
    out_plain, out_meta = plain(idx, tgt), meta(idx, tgt)
    extra = 0.5 * out_meta.router_entropy().mean(dim=(1, 2)).sum()  # per layer, summed over layers
    assert torch.isclose(out_meta.aux_loss, out_plain.aux_loss + extra)

    opt = torch.optim.AdamW([p for n, p in meta.named_parameters() if ".router." in n], lr=1e-2)
    before = out_meta.router_entropy().mean().item()
    for _ in range(20):
        opt.zero_grad()
        meta(idx, tgt).loss.backward()
        opt.step()
    assert meta(idx, tgt).router_entropy().mean().item() < before - 0.05


def test_router_entropy_loss_needs_a_router():
    with pytest.raises(TilelliError, match="router_entropy_weight"):
        tiny("vanilla-fp32", router_entropy_weight=0.1)


def test_sequence_longer_than_context_is_an_error():
    model = build_model(tiny("tilelli-lite-fp32", max_seq_len=16))
    with pytest.raises(TilelliError, match="exceeds the context of 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_fp32_and_ternary_share_parameters():
    fp = build_model(tiny("tilelli-lite-fp32"))
    tern = build_model(tiny("tilelli-lite-ternary"))
    tern.load_state_dict(fp.state_dict())  # same names and shapes: one checkpoint, two ways to run it
    idx = torch.randint(0, 256, (1, 20))
    assert not torch.allclose(fp(idx).logits, tern(idx).logits)


@pytest.mark.parametrize("name", ["tilelli-lite-fp32", "tilelli-fp32", "vanilla-fp32"])
def test_dropout_acts_in_training_only_and_adds_no_parameters(name):
    torch.manual_seed(0)
    plain = build_model(tiny(name))
    dropped = build_model(tiny(name, dropout=0.3))
    dropped.load_state_dict(plain.state_dict())  # strict: the same parameters and buffers
    idx = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        assert torch.equal(dropped.eval()(idx).logits, plain.eval()(idx).logits)
        dropped.train()
        a, b = dropped(idx).logits, dropped(idx).logits
    assert not torch.allclose(a, b)  # a fresh mask every call
    assert not torch.allclose(a, plain(idx).logits)


def test_the_model_layer_imports_nothing_above_it():
    """model/ is the bottom layer: training, inference, chat and serving build on it, never the reverse."""
    above = ("tilelli.train", "tilelli.infer", "tilelli.chat", "tilelli.serve", "tilelli.probe", "tilelli.commands",
             "tilelli.cli")
    for path in Path(tilelli.model.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not [n for n in names if n.startswith(above)], f"{path} imports {names}"

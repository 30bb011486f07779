"""Checkpoints: FP32 and packed round trips (bit-identical logits), real trit density,
and a helpful one-line TilelliError for every way a checkpoint can be wrong."""

import json
import math
import pickle
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import tilelli
from tilelli.errors import TilelliError
from tilelli.model import checkpoint
from tilelli.model.config import from_name, list_configs
from tilelli.model.models import build_model
from tilelli.model.ternary import TernaryModule

TINY = dict(d_model=32, n_layers=2, n_heads=4, max_seq_len=64)
OPTION_SETS = [{}, {"per_row": True}, {"hadamard": True}, {"lsq": True},
               {"per_row": True, "hadamard": True, "lsq": True}, {"fp_attention": True}]
# every architecture as a ternary model, with every quantizer option
PACKED_CASES = [(name, opts) for name in list_configs() if "ternary" in name or name == "vanilla-fp32"
                for opts in OPTION_SETS]


def _model(name, seed=0, **overrides):
    """A tiny model whose every parameter is moved off its init, so nothing loads by luck."""
    torch.manual_seed(seed)
    model = build_model(from_name(name, **{**TINY, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _logits(model, seed=1):
    idx = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(idx).logits  # (2, 40, 256)


def _stored_bits_per_weight(path):
    """Trit + scale bytes per ternary weight, counted from the safetensors file itself."""
    with safe_open(str(path / checkpoint.WEIGHTS_FILE), framework="pt") as f:
        shapes = json.loads(f.metadata()[checkpoint._META_SHAPES])
        stored = sum(f.get_tensor(k).nbytes for k in f.keys() if k.endswith((".trits", ".scale"))
                     and k.rsplit(".", 1)[0] in shapes)
    n = sum(math.prod(s) for s in shapes.values())
    return stored * 8 / n, n


@pytest.mark.parametrize("name", list_configs())
def test_fp32_round_trip_is_exact(tmp_path, name):
    model = _model(name)
    out = checkpoint.save(model, tmp_path / "ck", extra={"step": 7, "note": "hi"})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    mode = 0o666 & ~checkpoint._umask()
    assert all(p.stat().st_mode & 0o777 == mode for p in out.iterdir())  # readable like any file, not 0600
    loaded = tilelli.load(out)
    assert not loaded.training
    assert loaded.config == model.config
    assert torch.equal(_logits(loaded), _logits(model))
    cfg = checkpoint.read_config(out)
    assert cfg["format"] == "tilelli" and cfg["format_version"] == 1 and cfg["packed"] is False
    assert cfg["step"] == 7 and cfg["note"] == "hi"
    assert cfg["params"] == model.num_params()
    assert cfg["file_bytes"] == (out / "model.safetensors").stat().st_size


@pytest.mark.parametrize("name, opts", PACKED_CASES,
                         ids=[f"{n}-{'+'.join(o) or 'plain'}" for n, o in PACKED_CASES])
def test_packed_round_trip_is_bit_identical(tmp_path, name, opts):
    model = _model(name, quantize=True, **opts)
    ref = _logits(model)  # the latent model's quantized forward
    checkpoint.save(model, tmp_path / "p", packed=True)
    loaded = checkpoint.load(tmp_path / "p")
    assert torch.equal(_logits(loaded), ref)

    # the loaded model really holds trits: no latent weight (nor LSQ scale) left
    quantized = [m for m in loaded.modules() if isinstance(m, TernaryModule) and m.quantized]
    assert quantized
    for m in quantized:
        assert "weight" not in m._parameters and "scale" not in m._parameters
        assert m.packed_trits.dtype == torch.int8
    if opts.get("fp_attention"):  # FP32 Q/K/V stay latent
        assert any(isinstance(m, TernaryModule) and not m.quantized for m in loaded.modules())

    cfg = checkpoint.read_config(tmp_path / "p")
    bits, n = _stored_bits_per_weight(tmp_path / "p")
    assert cfg["packed"] is True and cfg["ternary_weights"] == n
    assert cfg["bits_per_weight"] == pytest.approx(bits)
    assert cfg["params"] == model.num_params()
    if not opts.get("per_row"):
        assert 1.6 <= bits <= 1.7
    # (per-row scales cost 32 bits per row: ~2.5 bits/weight at d=32, 1.68 at full size)

    # re-saving the packed model gives the same checkpoint back
    checkpoint.save(loaded, tmp_path / "again", packed=True)
    assert torch.equal(_logits(checkpoint.load(tmp_path / "again")), ref)
    weights = "model.safetensors"
    assert (tmp_path / "again" / weights).read_bytes() == (tmp_path / "p" / weights).read_bytes()


def test_packed_per_row_density_at_realistic_width(tmp_path):
    model = _model("tilelli-lite-ternary", d_model=256, n_layers=1, n_heads=8, per_row=True)
    checkpoint.save(model, tmp_path / "p", packed=True)
    bits, _ = _stored_bits_per_weight(tmp_path / "p")
    assert bits <= 1.75 and checkpoint.read_config(tmp_path / "p")["bits_per_weight"] == pytest.approx(bits)


def test_packed_file_is_much_smaller(tmp_path):
    model = _model("tilelli-lite-ternary", d_model=128, n_layers=4)
    checkpoint.save(model, tmp_path / "fp", packed=False)
    checkpoint.save(model, tmp_path / "tri", packed=True)
    fp = (tmp_path / "fp" / "model.safetensors").stat().st_size
    tri = (tmp_path / "tri" / "model.safetensors").stat().st_size
    assert tri * 10 < fp, (tri, fp)
    # the FP32 checkpoint of a ternary model keeps the latent weights: training can resume
    assert torch.equal(_logits(checkpoint.load(tmp_path / "fp")), _logits(model))


def test_bf16_checkpoint_halves_the_file_and_loads_as_fp32(tmp_path):
    model = _model("tilelli-lite-fp32", d_model=64)
    checkpoint.save(model, tmp_path / "fp")
    checkpoint.save(model, tmp_path / "bf", bf16=True)
    fp, bf = ((tmp_path / d / "model.safetensors").stat().st_size for d in ("fp", "bf"))
    assert bf < 0.52 * fp, (bf, fp)
    assert checkpoint.read_config(tmp_path / "bf")["weights_dtype"] == "bfloat16"
    loaded = tilelli.load(tmp_path / "bf")
    for (name, p), q in zip(loaded.state_dict().items(), model.state_dict().values(), strict=True):
        assert p.dtype == q.dtype and torch.equal(p, q.to(torch.bfloat16).to(q.dtype)), name
    assert torch.allclose(_logits(loaded), _logits(model), atol=0.1)
    with pytest.raises(TilelliError, match="bf16 applies to unpacked"):
        checkpoint.save(_model("tilelli-lite-ternary", quantize=True), tmp_path / "p", packed=True, bf16=True)


def test_packing_a_small_model_is_quick(tmp_path):
    model = _model("tilelli-lite-ternary", d_model=256, n_layers=4, n_heads=8)
    t0 = time.perf_counter()
    checkpoint.save(model, tmp_path / "p", packed=True)
    t1 = time.perf_counter()
    checkpoint.load(tmp_path / "p")
    t2 = time.perf_counter()
    assert t1 - t0 < 2.0 and t2 - t1 < 2.0, (t1 - t0, t2 - t1)


def test_tied_weights_are_saved_once(tmp_path):
    model = _model("tilelli-lite-fp32")
    model.extra_tied = torch.nn.Linear(32, 256, bias=False)
    model.extra_tied.weight = model.head.weight  # shares storage with head.weight
    checkpoint.save(model, tmp_path / "ck")
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        aliases = json.loads(f.metadata()[checkpoint._META_ALIASES])
    assert ("head.weight" in keys) != ("extra_tied.weight" in keys) and len(aliases) == 1


def test_load_never_unpickles(tmp_path, monkeypatch):
    model = _model("tilelli-lite-ternary", quantize=True)
    checkpoint.save(model, tmp_path / "fp")
    checkpoint.save(model, tmp_path / "p", packed=True)

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint.load must not unpickle")

    for mod, attr in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(mod, attr, refuse)
    checkpoint.load(tmp_path / "fp")
    checkpoint.load(tmp_path / "p")


# --- errors -------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    checkpoint.save(_model("tilelli-lite-ternary"), tmp_path / "ck")
    return tmp_path / "ck"


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if key in cfg["model"]:
            cfg["model"][key] = value
        else:
            cfg[key] = value
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_dir(tmp_path):
    with pytest.raises(TilelliError, match="does not exist"):
        checkpoint.load(tmp_path / "nope")


def test_dir_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TilelliError, match="no config.json"):
        checkpoint.load(tmp_path / "empty")


def test_pointing_at_a_file_inside_works(saved):
    assert checkpoint.load(saved / "model.safetensors").config.d_model == 32


def test_truncated_safetensors(saved):
    f = saved / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(TilelliError, match="truncated or corrupt"):
        checkpoint.load(saved)


def test_missing_safetensors(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(TilelliError, match="model.safetensors is missing"):
        checkpoint.load(saved)


def test_bad_json(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(TilelliError, match="not valid JSON"):
        checkpoint.load(saved)


def test_wrong_format(saved):
    _edit_config(saved, format="gguf")
    with pytest.raises(TilelliError, match="not a tilelli checkpoint config"):
        checkpoint.load(saved)


def test_wrong_format_version(saved):
    _edit_config(saved, format_version=2)
    with pytest.raises(TilelliError, match="written by tilelli format 2; this tilelli reads 1"):
        checkpoint.load(saved)


def test_config_that_does_not_match_the_weights(saved):
    _edit_config(saved, d_model=64)
    with pytest.raises(TilelliError, match=r"does not match model.safetensors: tensor '[\w.]+' has shape"):
        checkpoint.load(saved)


def test_config_with_another_depth(saved):
    _edit_config(saved, n_layers=3)
    with pytest.raises(TilelliError, match=r"the weights lack tensor 'blocks\.2\."):
        checkpoint.load(saved)


def test_unknown_config_field(saved):
    _edit_config(saved, model={"arch": "lite", "d_model": 32, "n_layers": 2, "wings": 2})
    with pytest.raises(TilelliError, match="unknown fields"):
        checkpoint.load(saved)


def test_packed_export_of_fp32_model(tmp_path):
    with pytest.raises(TilelliError, match="packed export needs a ternary model"):
        checkpoint.save(_model("tilelli-lite-fp32"), tmp_path / "p", packed=True)


def test_fp32_save_of_packed_model(tmp_path):
    checkpoint.save(_model("tilelli-lite-ternary"), tmp_path / "p", packed=True)
    with pytest.raises(TilelliError, match="save it with packed=True"):
        checkpoint.save(checkpoint.load(tmp_path / "p"), tmp_path / "fp")


def _rewrite_weights(path, change):
    file = str(path / "model.safetensors")
    with safe_open(file, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(tensors, meta)
    save_file(tensors, file, metadata=meta)


def test_packed_trits_too_short(tmp_path):
    checkpoint.save(_model("tilelli-lite-ternary"), tmp_path / "p", packed=True)

    def shorten(tensors, meta):
        tensors["head.trits"] = tensors["head.trits"][:-3].clone()

    _rewrite_weights(tmp_path / "p", shorten)
    with pytest.raises(TilelliError, match="corrupt: 'head.trits' has"):
        checkpoint.load(tmp_path / "p")


def test_packed_trits_with_bad_bytes(tmp_path):
    checkpoint.save(_model("tilelli-lite-ternary"), tmp_path / "p", packed=True)

    def spoil(tensors, meta):
        tensors["head.trits"][0] = 255

    _rewrite_weights(tmp_path / "p", spoil)
    with pytest.raises(TilelliError, match="head.trits.*byte 0 is 255"):
        checkpoint.load(tmp_path / "p")


def test_packed_checkpoint_with_fp32_config(tmp_path):
    checkpoint.save(_model("tilelli-lite-ternary"), tmp_path / "p", packed=True)
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    cfg["model"]["ternary"]["quantize"] = False
    (tmp_path / "p" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TilelliError, match="packed but its model config is FP32"):
        checkpoint.load(tmp_path / "p")


def test_save_onto_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(TilelliError, match="it is a file"):
        checkpoint.save(_model("tilelli-lite-fp32"), tmp_path / "f")


@pytest.mark.parametrize("name, opts", [c for c in PACKED_CASES if not c[1].get("hadamard")],
                         ids=[f"{n}-{'+'.join(o) or 'plain'}" for n, o in PACKED_CASES if not o.get("hadamard")])
def test_latent_weights_of_a_packed_checkpoint_quantize_back_to_its_trits(tmp_path, name, opts):
    """What --init-from a packed checkpoint starts from: the same ternary model, and latent weights to train."""
    from tilelli.model.ternary import latent_state_dict

    model = _model(name, quantize=True, **opts)
    checkpoint.save(model, tmp_path / "p", packed=True)
    packed = checkpoint.load(tmp_path / "p")
    fresh = _model(name, seed=5, quantize=True, **opts)
    fresh.load_state_dict(latent_state_dict(packed))
    assert torch.allclose(_logits(fresh.eval()), _logits(packed), atol=1e-5)
    mods = dict(packed.named_modules())
    for key, m in fresh.named_modules():
        if isinstance(m, TernaryModule) and m.quantized:
            assert "weight" in m._parameters  # trainable again
            (codes, scale), (want_codes, want_scale) = m.export_trits(), mods[key].export_trits()
            assert torch.equal(codes, want_codes)  # the very same trits
            torch.testing.assert_close(scale, want_scale, rtol=1e-6, atol=0)  # (a mean recomputed: last bits)

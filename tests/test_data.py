"""Training and evaluation windows over packed byte bins (tilelli.train.data)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tilelli.errors import TilelliError
from tilelli.train.data import ByteBatches, eval_windows, open_bin


@pytest.fixture
def bin_path(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, size=5000, dtype=np.uint8)
    path = tmp_path / "train.bin"
    data.tofile(path)
    return path


def window_starts(data: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> list[int]:
    """The offset in `data` of every (x, y) row; fails if a row is not a window of the file."""
    windows = np.lib.stride_tricks.sliding_window_view(data, x.shape[1] + 1)
    starts = []
    for row in torch.cat([x, y[:, -1:]], dim=1).numpy():
        (hits,) = np.nonzero((windows == row).all(axis=1))
        assert len(hits) >= 1, "a row is not a window of the file"
        starts.append(int(hits[0]))
    return starts


def test_open_bin_is_a_readonly_memmap(bin_path):
    data = open_bin(bin_path)
    assert isinstance(data, np.memmap) and data.dtype == np.uint8 and len(data) == 5000
    with pytest.raises(ValueError):
        data[0] = 1


def test_open_bin_errors(tmp_path):
    with pytest.raises(TilelliError, match=r"no train.bin in .*; run `tilelli prepare` first"):
        open_bin(tmp_path / "train.bin")
    (tmp_path / "valid.bin").write_bytes(b"")
    with pytest.raises(TilelliError, match="empty"):
        open_bin(tmp_path / "valid.bin")


def test_batches_are_shifted_windows_inside_the_file(bin_path):
    batches = ByteBatches(bin_path, batch_size=4, seq_len=32, seed=0)
    data = np.fromfile(bin_path, dtype=np.uint8)
    for _ in range(5):
        x, y = batches.next_batch()
        assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row, start in enumerate(window_starts(data, x, y)):
            assert torch.equal(x[row], torch.from_numpy(data[start : start + 32].astype(np.int64)))
    assert batches.batches_drawn == 5


def rss_file_kb() -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssFile:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_memory_stays_flat_on_a_big_file(tmp_path):
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(256 << 20)  # sparse: 256 MiB on disk costs nothing
    for data in (path, open_bin(path)):  # a path, or a memmap of the whole file
        batches = ByteBatches(data, batch_size=32, seq_len=256, seed=0)
        before = rss_file_kb()
        for _ in range(300):  # a map kept open would hold ~all 256 MiB after this
            batches.next_batch()
        assert rss_file_kb() - before < 32 << 10
        del batches


def test_an_in_memory_array_works_too():
    data = np.frombuffer(bytes(range(200)), dtype=np.uint8)
    x, y = ByteBatches(data, batch_size=2, seq_len=8, seed=0).next_batch()
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))
    with pytest.raises(TilelliError, match="flat uint8"):
        ByteBatches(data.astype(np.int32), batch_size=2, seq_len=8, seed=0)


def test_windows_reach_both_ends_of_a_tiny_file(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(6, dtype=np.uint8).tofile(path)  # exactly two possible windows of 5 bytes
    batches = ByteBatches(path, batch_size=64, seq_len=4, seed=0)
    x, y = batches.next_batch()
    assert set(x[:, 0].tolist()) == {0, 1}
    assert set(y[:, -1].tolist()) == {4, 5}


def test_same_seed_same_batches_other_seed_other_batches(bin_path):
    a, b, c = (ByteBatches(bin_path, 4, 16, seed=s) for s in (7, 7, 8))
    for _ in range(3):
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.next_batch()[0], c.next_batch()[0])


def test_global_rng_is_untouched(bin_path):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    ByteBatches(bin_path, 4, 16, seed=0).next_batch()
    assert np.random.rand() == expected


def test_resume_from_state_dict_is_bit_identical(bin_path):
    run = ByteBatches(bin_path, 4, 16, seed=3)
    for _ in range(3):
        run.next_batch()
    state = json.loads(json.dumps(run.state_dict()))  # as a checkpoint would store it
    expected = [run.next_batch() for _ in range(4)]
    resumed = ByteBatches(bin_path, 4, 16, seed=999)  # the seed is overridden by the state
    resumed.load_state_dict(state)
    assert resumed.batches_drawn == 3
    for x, y in expected:
        rx, ry = resumed.next_batch()
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_resume_with_other_shapes_is_refused(bin_path):
    state = ByteBatches(bin_path, 4, 16, seed=0).state_dict()
    with pytest.raises(TilelliError, match="global batch 4"):
        ByteBatches(bin_path, 8, 16, seed=0).load_state_dict(state)
    # Same global batch over two ranks is fine.
    ByteBatches(bin_path, 2, 16, seed=0, rank=1, world_size=2).load_state_dict(state)


def test_ddp_ranks_together_see_the_single_process_batch(bin_path):
    single = ByteBatches(bin_path, batch_size=6, seq_len=16, seed=5)
    ranks = [ByteBatches(bin_path, batch_size=3, seq_len=16, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(4):
        x, y = single.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_bin_shorter_than_one_window(tmp_path):
    path = tmp_path / "valid.bin"
    path.write_bytes(b"0123456789")
    with pytest.raises(TilelliError, match=r"valid.bin has 10 bytes .* seq_len \+ 1 = 17"):
        ByteBatches(path, batch_size=2, seq_len=16, seed=0)


def test_bad_rank(bin_path):
    with pytest.raises(TilelliError, match="rank"):
        ByteBatches(bin_path, 2, 16, seed=0, rank=2, world_size=2)


@pytest.mark.parametrize("size", [2, 17, 100, 161, 1000])
def test_eval_windows_predict_every_byte_once(tmp_path, size):
    path = tmp_path / "valid.bin"
    data = np.random.default_rng(size).integers(0, 256, size=size, dtype=np.uint8)
    data.tofile(path)
    batches = list(eval_windows(path, batch_size=3, seq_len=16))
    assert all(x.shape == y.shape and x.shape[0] <= 3 for x, y in batches)
    xs = torch.cat([x.flatten() for x, _ in batches]).numpy()
    ys = torch.cat([y.flatten() for _, y in batches]).numpy()
    assert np.array_equal(xs, data[:-1]) and np.array_equal(ys, data[1:])  # exactly len - 1 targets
    again = list(eval_windows(path, batch_size=3, seq_len=16))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


def test_eval_windows_max_batches(bin_path):
    batches = list(eval_windows(bin_path, batch_size=2, seq_len=16, max_batches=3))
    assert len(batches) == 3 and all(x.shape == (2, 16) for x, _ in batches)


def test_eval_windows_needs_two_bytes(tmp_path):
    (tmp_path / "v.bin").write_bytes(b"a")
    with pytest.raises(TilelliError, match="at least 2"):
        list(eval_windows(tmp_path / "v.bin", 2, 16))

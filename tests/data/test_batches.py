import json

import numpy as np
import pytest
import torch

from gatelab.core.errors import DataError
from gatelab.data import DataConfig, RandomWindowSampler, TokenSplit, build_data, eval_batches


def assert_windows(batch, split, starts, seq_len):
    """x, y and domains are the windows of `split` starting at `starts`, y shifted by one."""
    tokens, domains = np.asarray(split.tokens).astype(np.int64), np.asarray(split.domains).astype(np.int64)
    for row, s in enumerate(starts):
        assert batch.x[row].tolist() == tokens[s:s + seq_len].tolist()
        assert batch.y[row].tolist() == tokens[s + 1:s + seq_len + 1].tolist()
        assert batch.domains[row].tolist() == domains[s:s + seq_len].tolist()


def test_batch_shapes_and_contents(ramp_split):
    s = RandomWindowSampler(ramp_split, seq_len=16, batch_size=4, seed=0)
    starts = s.starts(0)
    b = s.next()
    assert b.x.shape == b.y.shape == b.domains.shape == (4, 16)
    assert b.x.dtype == b.y.dtype == b.domains.dtype == torch.int64
    assert torch.equal(b.x[:, 1:], b.y[:, :-1])
    assert_windows(b, ramp_split, starts, 16)
    assert s.batches_drawn == 1


def test_windows_reach_both_ends(ramp_split):
    s = RandomWindowSampler(ramp_split, seq_len=990, batch_size=64, seed=1)
    starts = np.concatenate([s.starts(k) for k in range(5)])
    assert starts.min() == 0 and starts.max() == len(ramp_split) - 991  # all 10 starts are drawn


def test_same_seed_same_batches_other_seed_differs(ramp_split):
    a = RandomWindowSampler(ramp_split, 8, 4, seed=3)
    b = RandomWindowSampler(ramp_split, 8, 4, seed=3)
    c = RandomWindowSampler(ramp_split, 8, 4, seed=4)
    xs_a = [a.next().x for _ in range(5)]
    assert all(torch.equal(x, b.next().x) for x in xs_a)
    assert not all(torch.equal(x, c.next().x) for x in xs_a)
    assert not torch.equal(xs_a[0], xs_a[1])


def test_exact_resume_from_state_dict(ramp_split):
    ref = RandomWindowSampler(ramp_split, 12, 3, seed=7)
    run = RandomWindowSampler(ramp_split, 12, 3, seed=7)
    expected = [ref.next() for _ in range(8)]
    for _ in range(5):
        run.next()
    state = json.loads(json.dumps(run.state_dict()))  # checkpoints store it as JSON
    assert state["batches_drawn"] == 5
    resumed = RandomWindowSampler(ramp_split, 12, 3, seed=7)
    resumed.load_state_dict(state)
    for want in expected[5:]:
        got = resumed.next()
        assert torch.equal(got.x, want.x) and torch.equal(got.y, want.y) and torch.equal(got.domains, want.domains)


@pytest.mark.parametrize("field, value", [("seed", 8), ("seq_len", 13), ("batch_size", 4), ("n_tokens", 999)])
def test_resume_rejects_other_data_config(ramp_split, field, value):
    s = RandomWindowSampler(ramp_split, 12, 3, seed=7)
    state = {**s.state_dict(), field: value}
    with pytest.raises(DataError, match=rf"saved data position has {field}={value}"):
        s.load_state_dict(state)
    with pytest.raises(DataError, match="invalid batches_drawn"):
        s.load_state_dict({**s.state_dict(), "batches_drawn": -1})


def test_seq_len_longer_than_data():
    split = TokenSplit(np.arange(50, dtype=np.uint16))
    with pytest.raises(DataError, match=r"seq_len=50 needs windows of 51 tokens but the training split has only 50; "
                                        r"use a smaller data.seq_len or more data"):
        RandomWindowSampler(split, seq_len=50, batch_size=2)
    with pytest.raises(DataError, match=r"seq_len=64 .* validation split has only 50"):
        eval_batches(split, 64, 2, 1)
    assert RandomWindowSampler(split, seq_len=49, batch_size=2).next().x.shape == (2, 49)


def test_seq_len_longer_than_corpus_via_build_data():
    data = build_data(DataConfig(corpus={"name": "synthetic", "n_docs": 20}, seq_len=4096))
    with pytest.raises(DataError, match=r"seq_len=4096 .* validation split has only \d+"):
        data.eval_batches(2)


def test_eval_batches_fixed_and_evenly_spaced(ramp_split):
    first = eval_batches(ramp_split, 10, 4, 3)
    again = eval_batches(ramp_split, 10, 4, 3)
    assert len(first) == 3
    for a, b in zip(first, again):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    # 12 windows from the first start (0) to the last (989), evenly spaced
    want = [(k * 989) // 11 for k in range(12)]
    for i, b in enumerate(first):
        assert_windows(b, ramp_split, want[4 * i:4 * i + 4], 10)


def test_eval_batches_cover_split_once(ramp_split):
    batches = eval_batches(ramp_split, 100, 4, None)
    starts = list(range(0, 900, 100))  # the 9 windows of 101 tokens that fit in 1000 tokens
    assert [len(b.x) for b in batches] == [4, 4, 1]
    assert_windows(batches[0], ramp_split, starts[:4], 100)
    assert_windows(batches[2], ramp_split, starts[8:], 100)


def test_unlabelled_split_and_device_move():
    split = TokenSplit(np.arange(100, dtype=np.uint16))
    b = RandomWindowSampler(split, 8, 2, device="cpu").next()
    assert b.domains is None and b.x.device.type == "cpu"
    assert b.to("cpu").domains is None


def test_token_split_checks_lengths():
    with pytest.raises(DataError, match=r"domain labels \(3\) and tokens \(4\)"):
        TokenSplit(np.zeros(4, np.uint16), np.zeros(3, np.uint8))


def test_bundle_samplers_use_config():
    cfg = DataConfig(corpus={"name": "synthetic", "n_docs": 100}, seq_len=24, batch_size=5, seed=11)
    data = build_data(cfg)
    s = data.train_sampler()
    assert (s.seq_len, s.batch_size, s.seed) == (24, 5, 11)
    ref = RandomWindowSampler(data.train, 24, 5, seed=11)
    assert torch.equal(s.next().x, ref.next().x)
    assert [b.x.shape for b in data.eval_batches(2)] == [(5, 24), (5, 24)]

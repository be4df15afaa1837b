"""Checkpoints: safetensors round trip, atomic writes, pruning, corruption errors."""
import pytest
import torch
from safetensors.torch import save_file

from gatelab.core.errors import CheckpointError
from gatelab.train import Trainer, list_checkpoints, load_checkpoint, save_checkpoint
from gatelab.train import checkpoint as ckpt_mod


def _model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 3))
    m[1].weight = torch.nn.Parameter(m[0].weight.t().contiguous())
    return m


def test_round_trip_of_nested_state(tmp_path):
    m = _model()
    state = {"step": 3, "t": (1, 2.5, "x", None), "opt": {"state": {0: {"exp_avg": torch.arange(4.0)}}},
             "rng": torch.get_rng_state()}
    path = save_checkpoint(tmp_path, 3, m, state)
    m2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 3))
    loaded = load_checkpoint(path, m2)
    assert loaded["step"] == 3 and loaded["t"] == (1, 2.5, "x", None)
    assert torch.equal(loaded["opt"]["state"][0]["exp_avg"], torch.arange(4.0))
    assert torch.equal(loaded["rng"], state["rng"])
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_keep_last_prunes_oldest(tmp_path):
    m = _model()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, m, {"step": step}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-0000003", "ckpt-0000004"]


def test_write_killed_midway_leaves_previous_checkpoint(tmp_path, monkeypatch):
    m = _model()
    save_checkpoint(tmp_path, 1, m, {"step": 1})

    def crash(*a, **k):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ckpt_mod, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, m, {"step": 2})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-0000001"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-0000001"]  # temp dir cleaned
    assert load_checkpoint(list_checkpoints(tmp_path)[-1], _model())["step"] == 1


def test_leftover_temp_dir_is_not_a_checkpoint(tmp_path):
    """A process killed hard (no cleanup) leaves a .tmp directory: never listed or loaded."""
    m = _model()
    save_checkpoint(tmp_path, 1, m, {"step": 1})
    junk = tmp_path / ".ckpt-0000002.tmp-abc"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"partial")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-0000001"]


def test_corrupt_and_incomplete_checkpoints_give_clear_errors(tmp_path):
    m = _model()
    path = save_checkpoint(tmp_path, 1, m, {"w": torch.ones(2)})
    (path / "state.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_checkpoint(path)
    (path / "state.json").unlink()
    with pytest.raises(CheckpointError, match="state.json is missing"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_checkpoint_for_another_architecture_is_rejected(tmp_path):
    path = save_checkpoint(tmp_path, 1, _model(), {})
    other = torch.nn.Sequential(torch.nn.Linear(3, 5))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(path, other)


def test_truncated_model_file(tmp_path, tiny_cfg):
    trainer = Trainer(tiny_cfg([("train.steps", "2")]), tmp_path)
    trainer.fit()
    path = list_checkpoints(tmp_path / "checkpoints")[-1]
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        trainer.load(path)

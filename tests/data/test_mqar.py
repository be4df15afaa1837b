"""MQAR: layout, determinism, exact-match metric, config errors, and a model learning it."""
import pytest
import torch

from gatelab.core.config import parse
from gatelab.core.errors import ConfigError
from gatelab.data.tasks import MQARConfig, make_mqar, mqar_accuracy, train_mqar
from gatelab.data.tasks.mqar import IGNORE


def test_layout_and_targets():
    cfg = MQARConfig(vocab_size=64, seq_len=40, num_kv_pairs=5)
    b = make_mqar(cfg, 50, seed=3)
    assert b.inputs.shape == b.targets.shape == (50, 40)
    for x, y in zip(b.inputs.tolist(), b.targets.tolist()):
        keys, values = x[0:10:2], x[1:10:2]
        assert len(set(keys)) == 5 and all(1 <= k < 32 for k in keys) and all(32 <= v < 64 for v in values)
        pairs = dict(zip(keys, values))
        queried = [p for p, t in enumerate(y) if t != IGNORE]
        assert len(queried) == 5 and all(p >= 10 and p % 2 == 0 for p in queried)
        assert sorted(x[p] for p in queried) == sorted(keys)  # every key asked once
        assert all(y[p] == pairs[x[p]] == x[p + 1] for p in queried)
        assert all(x[p] == 0 for p in range(10, 40) if p not in queried and p - 1 not in queried)


def test_deterministic_by_seed():
    cfg = MQARConfig(vocab_size=64, seq_len=32, num_kv_pairs=4)
    a, b, c = make_mqar(cfg, 8, 1), make_mqar(cfg, 8, 1), make_mqar(cfg, 8, 2)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_accuracy_counts_only_queries():
    cfg = MQARConfig(vocab_size=32, seq_len=16, num_kv_pairs=2)
    b = make_mqar(cfg, 4, 0)
    oracle = torch.nn.functional.one_hot(b.targets.clamp_min(0), 32).float()
    assert mqar_accuracy(oracle, b.targets) == 1.0
    oracle[0, (b.targets[0] != IGNORE).nonzero()[0, 0]] = torch.nn.functional.one_hot(torch.tensor(0), 32).float()
    assert mqar_accuracy(oracle, b.targets) == pytest.approx(7 / 8)


@pytest.mark.parametrize("spec,key", [({"num_kv_pairs": 40, "vocab_size": 64}, "vocab_size"),
                                      ({"num_kv_pairs": 8, "seq_len": 30}, "seq_len"),
                                      ({"num_kv_pairs": 0}, "num_kv_pairs")])
def test_config_errors(spec, key):
    with pytest.raises(ConfigError, match=key):
        parse(MQARConfig, spec)


def test_train_mqar_updates_the_model_and_reports():
    """train_mqar runs any ids -> logits model (here a bare embedding + head) and reports
    held-out accuracy in [0, 1]; a model that cannot see context stays near chance."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(32, 16), torch.nn.Linear(16, 32))
    before = [p.detach().clone() for p in model.parameters()]
    result = train_mqar(model, MQARConfig(vocab_size=32, seq_len=12, num_kv_pairs=2), steps=20, lr=1e-2,
                        batch_size=16, n_eval=64)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert 0.0 <= result["accuracy"] < 0.3 and result["final_train_loss"] > 0
    with pytest.raises(ValueError, match="steps >= 1"):
        train_mqar(model, MQARConfig(), steps=0)

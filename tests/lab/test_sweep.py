"""Sweeps: expansion (variants x grid x seeds), validation before training, run directories with
provenance, skip of finished runs, resume of failed/interrupted ones, worker processes, the CLI."""
import json
import os
import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from gatelab.cli import main
from gatelab.core.errors import ConfigError
from gatelab.lab import expand, load_sweep, read_run, run_sweep
from gatelab.lab.compare import load_experiment
from gatelab.train import Trainer, read_metrics
from gatelab.train import trainer as trainer_module

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "sweeps"
TINY = {
    "data": {"corpus": {"name": "synthetic", "n_docs": 200}, "seq_len": 16, "batch_size": 2},
    "model": {"d_model": 16, "n_layer": 1, "block": {"mixer": {"name": "attention", "n_head": 2}}},
    "schedule": {"name": "cosine", "warmup_steps": 1},
    "train": {"steps": 4, "ckpt_every": 2},
    "eval": {"every": 0, "batches": 1},
    "log": {"every": 1, "progress": False},
}


def tiny_sweep(**over):
    return load_sweep({"name": "t", "base": TINY, **over})


# ---------------------------------------------------------------------------- expansion


def test_expansion_counts_ids_and_configs():
    spec = tiny_sweep(
        variants={"dense": {}, "wide": {"model": {"d_model": 32}, "grid": {"optim.lr": [1e-3, 2e-3, 4e-3]}}},
        grid={"optim.lr": [1e-3, 3e-3], "model.n_layer": [1, 2]}, seeds=[0, 1], best_over=["optim.lr"])
    runs = expand(spec)
    assert len(runs) == 2 * 2 * 2 + 3 * 2  # dense: 2 lr x 2 depths x 2 seeds; wide: its own 3-lr grid x 2 seeds
    assert [r.run_id for r in runs[:3]] == ["dense/optim.lr=0.001/model.n_layer=1/seed0",
                                            "dense/optim.lr=0.001/model.n_layer=1/seed1",
                                            "dense/optim.lr=0.001/model.n_layer=2/seed0"]
    assert runs[-1].run_id == "wide/optim.lr=0.004/seed1"
    assert len({r.run_id for r in runs}) == len(runs)
    for r in runs:
        assert r.config.optim.kwargs()["lr"] == r.params["optim.lr"]
        assert r.config.train.seed == r.config.data.seed == r.seed
        assert r.config.name == r.run_id
        assert re.fullmatch(r"[A-Za-z0-9._,=+/-]+", r.run_id)
    assert runs[-1].config.model.d_model == 32 and "model.n_layer" not in runs[-1].params
    assert runs[2].config.model.n_layer == 2
    assert [r.run_id for r in expand(spec)] == [r.run_id for r in runs]  # stable


def test_yaml_string_numbers_resolve_to_typed_params(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": TINY}) + "grid: {optim.lr: [3e-3]}\n")  # PyYAML reads 3e-3 as a str
    spec = load_sweep(path)
    assert spec.name == "s" and spec.variants == {"base": {}} and spec.seeds == [0]
    (run,) = expand(spec)
    assert run.run_id == "base/optim.lr=0.003/seed0" and run.params == {"optim.lr": 0.003}


def test_compare_experiment_file_loads_as_sweep():
    path = resources.files("gatelab.lab.presets") / "compare.yaml"
    spec = load_sweep(str(path))
    runs = expand(spec, [("train.steps", "50")])
    assert spec.name == "compare" and spec.seeds == [0] and spec.grid == {}
    assert [r.run_id for r in runs] == [f"{v}/seed0" for v in load_experiment(None).variants]
    assert all(r.config.train.steps == 50 and r.params == {} for r in runs)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweep_files_expand(path):
    spec = load_sweep(path)
    runs = expand(spec)
    assert spec.name == path.stem and len(runs) >= 2 and spec.best_over


@pytest.mark.parametrize("over, fragment", [
    ({"grdi": {}}, "unknown top-level keys ['grdi']"),
    ({"grid": {"optim.lr": []}}, "optim.lr must be a non-empty list"),
    ({"grid": {"optim.lr": 0.1}}, "optim.lr must be a non-empty list"),
    ({"grid": {"train.seed": [1, 2]}}, "use `seeds:`"),
    ({"grid": {"model.block": [{"ffn": "gelu"}]}}, "put structured alternatives in `variants`"),
    ({"seeds": []}, "non-empty list of distinct integers"),
    ({"seeds": [1, 1]}, "non-empty list of distinct integers"),
    ({"best_over": ["optim.lr"]}, "best_over keys ['optim.lr'] are not grid keys"),
    ({"variants": {"a/b": {}}}, "variant name 'a/b'"),
    ({"name": "../x"}, "name '../x'"),
])
def test_bad_sweep_files(over, fragment):
    with pytest.raises(ConfigError) as ei:
        tiny_sweep(**over)
    assert fragment in str(ei.value)


@pytest.mark.parametrize("over, overrides, fragment", [
    ({"grid": {"optim.lr": [0.003, "3e-3"]}}, [], "two runs share the id 'base/optim.lr=0.003/seed0'"),
    ({"grid": {"optim.lr": [0.003]}}, [("optim.lr", "0.1")], "would overwrite grid keys"),
    ({}, [("data.seed", "3")], "conflicts with the sweep's seeds"),
    ({"variants": {"ok": {}, "bad": {"model": {"n_layr": 2}}}}, [], "run bad/seed0: unknown config key 'model.n_layr'"),
])
def test_bad_expansions(over, overrides, fragment):
    with pytest.raises(ConfigError) as ei:
        expand(tiny_sweep(**over), overrides)
    assert fragment in str(ei.value)


def test_every_run_validated_before_any_training(tmp_path, monkeypatch):
    spec = tiny_sweep(variants={"ok": {}, "bad": {"model": {"block": {"mixer": {"n_head": 5}}}}})
    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda *a, **k: pytest.fail("trained before validating"))
    with pytest.raises(ConfigError, match="run bad/seed0: config model.block.mixer.n_head=5"):
        run_sweep(spec, tmp_path / "out", echo=lambda s: None)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- running


def test_run_directory_record_and_skip_of_finished_runs(tmp_path, monkeypatch):
    spec = tiny_sweep(grid={"optim.lr": [1e-3, 3e-3]}, best_over=["optim.lr"])
    lines = []
    records = run_sweep(spec, tmp_path, echo=lines.append)
    assert [r["run_id"] for r in records] == ["base/optim.lr=0.001/seed0", "base/optim.lr=0.003/seed0"]
    assert len(lines) == 2 and "val_loss" in lines[0]
    assert yaml.safe_load((tmp_path / "sweep.yaml").read_text())["best_over"] == ["optim.lr"]
    run_dir = tmp_path / "runs" / records[1]["run_id"]
    for f in ("config.yaml", "metrics.jsonl", "run.json", "tokenizer_config.json"):
        assert (run_dir / f).is_file(), f
    assert list((run_dir / "checkpoints").iterdir())
    rec = read_run(run_dir)
    assert rec == records[1]
    assert rec["status"] == "finished" and rec["error"] is None and rec["sweep"] == "t"
    assert rec["params"] == {"optim.lr": 0.003} and rec["seed"] == 0 and rec["variant"] == "base"
    assert rec["started"] <= rec["finished"] and rec["wall_s"] > 0
    assert set(rec["versions"]) == {"gatelab", "torch", "python", "numpy"}
    assert rec["git"]["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", rec["git"]["commit"])
    assert rec["git"]["dirty"] in (None, True, False) and "torch" in rec["hardware"]
    metrics = read_metrics(run_dir)
    s = rec["summary"]
    assert s["train_loss"] == pytest.approx(sum(m["step_loss"] for m in metrics) / 4)  # log.every 1: all 4 steps
    assert s["tokens_per_s"] == pytest.approx(sum(m["tokens_per_s"] for m in metrics) / 4)
    assert s["val_loss"] == metrics[-1]["val_loss"] and s["params"] > s["active_params"] > 0
    assert any(k.startswith("val_loss/") for k in s) and "f_attn" in s and s["flops_per_token"] > 0
    stamp = (run_dir / "metrics.jsonl").stat().st_mtime_ns
    # a second sweep trains nothing: every run is finished
    monkeypatch.setattr(trainer_module.Trainer, "__init__", lambda *a, **k: pytest.fail("retrained a finished run"))
    lines.clear()
    again = run_sweep(spec, tmp_path, echo=lines.append)
    assert again == records and all("skipped" in line for line in lines)
    assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == stamp


def test_changed_config_in_existing_run_dir_is_refused(tmp_path):
    spec = tiny_sweep()
    run_sweep(spec, tmp_path, echo=lambda s: None)
    with pytest.raises(ConfigError, match=r"different config \(model.d_model: 16 -> 32\)"):
        run_sweep(spec, tmp_path, overrides=[("model.d_model", "32")], echo=lambda s: None)


def test_failed_run_is_recorded_then_resumed_to_the_uninterrupted_result(tmp_path, monkeypatch):
    spec = tiny_sweep(base={**TINY, "train": {"steps": 6, "ckpt_every": 2}}, seeds=[0, 1])
    full = run_sweep(spec, tmp_path / "full", echo=lambda s: None)

    real_step = Trainer.train_step

    def failing_step(self):
        if self.cfg.train.seed == 0 and self.step == 3:  # after the step-2 checkpoint
            raise RuntimeError("boom\nsecond line")
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", failing_step)
    split = run_sweep(spec, tmp_path / "split", echo=lambda s: None)
    assert [r["status"] for r in split] == ["failed", "finished"]  # the sweep went on after the failure
    assert split[0]["error"] == "RuntimeError: boom" and split[0]["finished"] is None
    run_dir = tmp_path / "split" / "runs" / "base" / "seed0"
    assert "boom" in (run_dir / "error.log").read_text()
    assert read_run(run_dir)["status"] == "failed"

    trained = []

    def counting_step(self):
        trained.append(self.step + 1)
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", counting_step)
    resumed = run_sweep(spec, tmp_path / "split", echo=lambda s: None)
    assert trained == [3, 4, 5, 6]  # from the step-2 checkpoint; the finished seed-1 run is not retrained
    assert resumed[0]["status"] == "finished" and resumed[0]["started"] == split[0]["started"]
    assert resumed[1] == split[1]  # finished: skipped
    full_metrics = read_metrics(tmp_path / "full" / "runs" / "base" / "seed0")
    split_metrics = read_metrics(run_dir)
    assert [m["step"] for m in split_metrics] == [1, 2, 3, 4, 5, 6]
    assert [m["step_loss"] for m in split_metrics] == pytest.approx([m["step_loss"] for m in full_metrics], abs=1e-6)
    for key in ("train_loss", "val_loss"):
        assert resumed[0]["summary"][key] == pytest.approx(full[0]["summary"][key], abs=1e-6)


def test_worker_processes(tmp_path):
    spec = tiny_sweep(seeds=[0, 1])
    lines = []
    records = run_sweep(spec, tmp_path, workers=2, echo=lines.append)
    assert [r["run_id"] for r in records] == ["base/seed0", "base/seed1"]
    assert all(r["status"] == "finished" for r in records) and len(lines) == 2
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert all(f"({threads} threads)" in r["hardware"] for r in records)
    assert records[0]["summary"]["val_loss"] != records[1]["summary"]["val_loss"]  # the seeds differ


# ---------------------------------------------------------------------------- the CLI


def test_cli_sweep_then_runs(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"base": TINY, "variants": {"a": {}, "b": {"model": {"d_model": 32}}},
                                    "grid": {"optim.lr": [1e-3, 3e-3]}, "seeds": [0, 1], "best_over": ["optim.lr"]}))
    assert main(["sweep", str(path), "--print-runs"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "a/optim.lr=0.001/seed0"
    out_dir = tmp_path / "runs" / "tiny"
    assert main(["sweep", str(path), "--out", str(out_dir), "--train.steps", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("val_loss") == 8 + 1 and "| a " in out and "optim.lr=" in out  # 8 progress lines + table
    root = str(tmp_path / "runs")
    assert main(["runs", "list", "--root", root, "variant=b", "optim.lr=0.003"]) == 0
    listed = capsys.readouterr().out
    assert "b/optim.lr=0.003/seed0" in listed and "b/optim.lr=0.003/seed1" in listed and "a/" not in listed
    assert main(["runs", "show", "a/optim.lr=0.001/seed1", "--root", root]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["seed"] == 1 and shown["summary"]["step"] == 3
    assert main(["runs", "compare", "--root", root, "--baseline", "a"]) == 0
    table = capsys.readouterr().out
    assert "p (one-sided Welch, lower)" in table and "| b " in table and "| 2 " in table


@pytest.mark.parametrize("argv, fragment", [
    (["sweep", "/nonexistent.yaml"], "does not exist"),
    (["sweep", "{dir}/s.yaml", "--train.sed", "1"], "unknown config key 'train.sed'"),
    (["sweep", "{dir}/s.yaml", "--workers", "0"], "workers=0 must be >= 1"),
    (["sweep", "{dir}/empty.yaml"], "optim.lr must be a non-empty list"),
])
def test_cli_sweep_bad_input_exits_2(tmp_path, argv, fragment, capsys):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"base": TINY}))
    (tmp_path / "empty.yaml").write_text(yaml.safe_dump({"base": TINY, "grid": {"optim.lr": []}}))
    argv = [a.format(dir=tmp_path) for a in argv]
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1, err


def test_cli_sweep_with_a_failed_run_exits_1(tmp_path, monkeypatch, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": TINY, "seeds": [0, 1]}))
    real_step = Trainer.train_step

    def failing_step(self):
        if self.cfg.train.seed == 1:
            raise RuntimeError("boom")
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", failing_step)
    assert main(["sweep", str(path), "--out", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    assert "base/seed1: FAILED (RuntimeError: boom)" in captured.out and "| base " in captured.out
    err = captured.err.strip()
    assert "1 of 2 runs failed (base/seed1)" in err and len(err.splitlines()) == 1, err

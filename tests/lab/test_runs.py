"""run.json records, the SQLite run index (refresh, queries, lookups), the per-variant comparison
and `gatelab runs`, on hand-written records (no training)."""
import json
import math

import pytest
import yaml
from scipy import stats as sps

from gatelab.cli import main
from gatelab.core.errors import ConfigError
from gatelab.lab import RunIndex, compare_runs, compare_table, parse_filters, read_run, sweep_best_over, write_run
from gatelab.lab.runs import INDEX_FILE, summarize

# (variant, lr, seed, val_loss): variant "a" is best at lr 0.002, "b" (the baseline) at lr 0.001
VALUES = [("a", 0.001, 0, 1.0), ("a", 0.001, 1, 1.2), ("a", 0.002, 0, 0.8), ("a", 0.002, 1, 0.9),
          ("b", 0.001, 0, 1.0), ("b", 0.001, 1, 1.1), ("b", 0.002, 0, 1.3), ("b", 0.002, 1, 1.5)]


def record(sweep, variant, lr, seed, val, status="finished"):
    run_id = f"{variant}/optim.lr={lr!r}/seed{seed}"
    return {"run_id": run_id, "sweep": sweep, "variant": variant, "params": {"optim.lr": lr}, "seed": seed,
            "status": status, "error": None if status == "finished" else "RuntimeError: boom",
            "started": "2026-01-01T00:00:00+00:00", "finished": None, "wall_s": 1.5,
            "git": {"commit": "0" * 40, "dirty": False}, "versions": {"gatelab": "0.1.0"}, "hardware": "CPU",
            "summary": {"val_loss": val, "val_loss/code": val + 1, "train_loss": val - 0.1} if val else {}}


@pytest.fixture
def root(tmp_path):
    for v, lr, seed, val in VALUES:
        rec = record("s1", v, lr, seed, val)
        write_run(tmp_path / "s1" / "runs" / rec["run_id"], rec)
    (tmp_path / "s1" / "sweep.yaml").write_text(yaml.safe_dump({"name": "s1", "best_over": ["optim.lr"]}))
    failed = record("s1", "a", 0.004, 0, None, status="failed")
    write_run(tmp_path / "s1" / "runs" / failed["run_id"], failed)
    return tmp_path


def ids(records):
    return sorted(r["run_id"] for r in records)


def test_write_read_round_trip_is_atomic(tmp_path):
    rec = {"run_id": "x", "summary": {"val_loss": math.nan, "n": 3}}
    write_run(tmp_path / "r", rec)
    assert read_run(tmp_path / "r") == {"run_id": "x", "summary": {"val_loss": "nan", "n": 3}}
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["run.json"]  # no temporary file left
    with pytest.raises(ConfigError, match="has no run.json"):
        read_run(tmp_path)


def test_refresh_picks_up_new_changed_and_removed_runs(root):
    with RunIndex(root) as index:
        assert index.refresh() == 9
        assert index.refresh() == 0  # nothing changed
        assert (root / INDEX_FILE).is_file()
        rec = record("s1", "a", 0.001, 0, 0.5)  # changed summary
        write_run(root / "s1" / "runs" / rec["run_id"], rec)
        new = record("s2", "c", 0.001, 0, 2.0)
        write_run(root / "s2" / "runs" / new["run_id"], new)
        assert index.refresh() == 2
        assert index.get("a/optim.lr=0.001/seed0")["summary"]["val_loss"] == 0.5
        assert ids(index.query({"variant": "c"})) == ["c/optim.lr=0.001/seed0"]
        (root / "s2" / "runs" / new["run_id"] / "run.json").unlink()
        assert index.refresh() == 1 and index.query({"sweep": "s2"}) == []
    with RunIndex(root) as index:  # a new connection reuses the stored index
        assert index.refresh() == 0 and len(index.query()) == 9


def test_queries(root):
    with RunIndex(root) as index:
        index.refresh()
        assert len(index.query()) == 9
        assert ids(index.query({"variant": "b", "seed": "1"})) == ["b/optim.lr=0.001/seed1", "b/optim.lr=0.002/seed1"]
        assert ids(index.query({"optim.lr": "2e-3", "variant": "a"})) == ["a/optim.lr=0.002/seed0",
                                                                         "a/optim.lr=0.002/seed1"]
        assert ids(index.query({"params.optim.lr": "0.004"})) == ["a/optim.lr=0.004/seed0"]
        assert ids(index.query({"val_loss<": "1"})) == ["a/optim.lr=0.002/seed0", "a/optim.lr=0.002/seed1"]
        assert len(index.query({"val_loss<=": "1"})) == 4 and len(index.query({"summary.val_loss>": "1.2"})) == 2
        assert ids(index.query({"status!=": "finished"})) == ["a/optim.lr=0.004/seed0"]
        assert len(index.query({"error": "null"})) == 8 and len(index.query({"git.dirty": "false"})) == 9
        assert len(index.query({"val_loss/code>": "2.2"})) == 2
        hit = index.query({"run_id": "b/optim.lr=0.002/seed1"})[0]
        assert hit["run_dir"] == str(root / "s1" / "runs" / "b" / "optim.lr=0.002" / "seed1")
        with pytest.raises(ConfigError, match=r"no indexed run has the key 'varint' \(did you mean 'variant'\?\)"):
            index.query({"varint": "a"})
        with pytest.raises(ConfigError, match="needs a number"):
            index.query({"variant<": "a"})


def test_parse_filters():
    assert parse_filters(["variant=a", "val_loss<2", "seed!=1", "x>=0.5", "k=a=b"]) == {
        "variant": "a", "val_loss<": "2", "seed!=": "1", "x>=": "0.5", "k": "a=b"}
    for bad in ("variant", "=a", "val_loss<"):
        with pytest.raises(ConfigError, match="malformed"):
            parse_filters([bad])


def test_get_across_sweeps(root):
    other = record("s2", "a", 0.001, 0, 3.0)
    write_run(root / "s2" / "runs" / other["run_id"], other)
    with RunIndex(root) as index:
        index.refresh()
        assert index.get("b/optim.lr=0.001/seed0")["sweep"] == "s1"
        with pytest.raises(ConfigError, match="several sweeps; name one of: s1/a/optim.lr=0.001/seed0"):
            index.get("a/optim.lr=0.001/seed0")
        assert index.get("s2/a/optim.lr=0.001/seed0")["summary"]["val_loss"] == 3.0
        with pytest.raises(ConfigError, match="no run 'zzz'"):
            index.get("zzz")
    with pytest.raises(ConfigError, match="does not exist"):
        RunIndex(root / "missing")


def test_compare_runs_best_over_lr_and_welch(root):
    with RunIndex(root) as index:
        index.refresh()
        records = index.query()
    over = sweep_best_over(records, root)
    assert over == ["optim.lr"]
    rows = compare_runs(records, over=over, baseline="b")
    a, b = rows
    assert (a["variant"], a["best"], a["n"], a["values"]) == ("a", {"optim.lr": 0.002}, 2, [0.8, 0.9])
    assert (b["variant"], b["best"], b["values"]) == ("b", {"optim.lr": 0.001}, [1.0, 1.1])
    assert a["mean"] == pytest.approx(0.85) and a["std"] == pytest.approx(math.sqrt(0.005))
    expected = sps.ttest_ind([0.8, 0.9], [1.0, 1.1], equal_var=False, alternative="less").pvalue
    assert a["p"] == pytest.approx(expected) and a["delta"] == pytest.approx(-0.2) and "p" not in b
    table = compare_table(rows, baseline="b")
    assert "| a " in table and "0.8500 ± 0.0707" in table and f"{expected:.3g}" in table
    # without best-over, every lr of a variant pools into one setting
    pooled = compare_runs(records)
    assert pooled[0]["n"] == 4 and pooled[0]["mean"] == pytest.approx(0.975)
    with pytest.raises(ConfigError, match="baseline 'zz' is not among"):
        compare_runs(records, baseline="zz")
    with pytest.raises(ConfigError, match="metric 'val_los' is in no run's summary"):
        compare_runs(records, metric="val_los")


def test_summary_from_metrics(tmp_path):
    recs = [{"step": 2, "loss": 4.0, "tokens_per_s": 10.0}, {"step": 3, "val_loss": 9.0},
            {"step": 5, "loss": 2.0, "tokens_per_s": 30.0}, {"step": 6, "loss": 1.0, "tokens_per_s": 20.0,
                                                             "val_loss": 3.0, "f_attn": 0.1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    s = summarize(tmp_path, params=100, losses=[5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    assert s["train_loss"] == pytest.approx(2.5) and s["val_loss"] == 3.0 and s["f_attn"] == 0.1
    assert s["tokens_per_s"] == pytest.approx(20.0) and s["params"] == 100 and s["step"] == 6
    # a resumed run that trained fewer steps here: step-weighted windows (6-5, 5-3, then 2-0: 5 steps)
    s = summarize(tmp_path, params=100, losses=[1.0])
    assert s["train_loss"] == pytest.approx((1.0 * 1 + 2.0 * 2 + 4.0 * 2) / 5)


def test_cli_runs(root, capsys):
    assert main(["runs", "list", "--root", str(root), "variant=a", "val_loss<1"]) == 0
    out = capsys.readouterr().out
    assert "a/optim.lr=0.002/seed0" in out and "a/optim.lr=0.002/seed1" in out and "optim.lr=0.001" not in out
    assert main(["runs", "show", "b/optim.lr=0.001/seed1", "--root", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["val_loss"] == 1.1
    assert main(["runs", "compare", "--root", str(root), "--baseline", "b"]) == 0
    out = capsys.readouterr().out
    assert "optim.lr=0.002" in out and "0.8500 ± 0.0707" in out and "Δ vs b" in out
    assert main(["runs", "compare", "--root", str(root), "--best-over"]) == 0
    assert "0.9750 ± " in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment", [
    (["runs", "list", "variant"], "filter 'variant' is malformed"),
    (["runs", "list", "varaint=a"], "no indexed run has the key 'varaint'"),
    (["runs", "show", "nope"], "no run 'nope'"),
    (["runs", "compare", "--baseline", "zz"], "baseline 'zz' is not among"),
    (["runs", "compare", "variant=zz"], "no finished runs match"),
    (["runs", "list", "--model.x=1"], "unrecognized arguments 'model.x 1' for runs"),
    (["runs", "list", "--bogus"], "unrecognized argument '--bogus'"),
])
def test_cli_runs_bad_input_exits_2(root, argv, fragment, capsys):
    assert main(argv + ["--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1, err


def test_cli_runs_missing_root(tmp_path, capsys):
    assert main(["runs", "list", "--root", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err

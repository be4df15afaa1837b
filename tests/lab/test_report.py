"""`gatelab report`: run discovery, grouping, tables, Pareto front, figures and pages, CLI."""
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gatelab.cli import main
from gatelab.core.errors import ConfigError
from gatelab.lab import plots
from gatelab.lab.plots import log_ticks, pareto_front
from gatelab.lab.report import (_processed, find_runs, group_runs, load_run, make_report, optimizer_table,
                                results_rows)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(path, name="dense", seed=0, val=(3.0, 2.0), optim="adamw", lr=1e-3, moe_layers=0, meta=None,
             flops=1000.0, active=500.0):
    """A run directory written by hand: config.yaml, metrics.jsonl (train + eval records), run.json."""
    path.mkdir(parents=True)
    cfg = {"name": name, "model": {"n_layer": 2, "depth": {"name": "none"}}, "optim": {"name": optim, "lr": lr},
           "train": {"seed": seed}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    records = []
    for i, v in enumerate(val):
        step = 10 * (i + 1)
        rec = {"step": step, "loss": v + 0.1, "tokens_per_s": 100.0 * (i + 1), "flops_per_token": flops,
               "active_params": active, "val_loss": v, "f_attn/layer0": 0.1, "f_attn/layer1": 0.2}
        for layer in range(moe_layers):
            rec[f"layer{layer}/ffn/router_entropy"] = 1.3 - 0.1 * i
            rec[f"layer{layer}/ffn/domain_mi"] = 0.01 * (layer + 1)
        records.append(rec)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if meta is not None:
        (path / "run.json").write_text(json.dumps(meta))
    return path


# ---------------------------------------------------------------------------- discovery and grouping


def test_find_runs_at_any_depth_once_each_and_not_inside_runs(tmp_path):
    a = fake_run(tmp_path / "sweep" / "runs" / "a-s0")
    b = fake_run(tmp_path / "compare" / "runs" / "b")
    fake_run(a / "checkpoints" / "nested")  # inside a run: not searched
    (tmp_path / "empty").mkdir()
    assert find_runs([tmp_path]) == [b.resolve(), a.resolve()]
    assert find_runs([a, tmp_path / "sweep", a]) == [a.resolve()]


@pytest.mark.parametrize("paths, fragment", [([], "no RUNS given"), (["/nonexistent/x"], "does not exist")])
def test_find_runs_bad_input(paths, fragment):
    with pytest.raises(ConfigError, match=fragment):
        find_runs(paths)


def test_find_runs_in_a_dir_without_runs_names_it(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.yaml").write_text("name: half\n")  # no metrics.jsonl: not a run
    with pytest.raises(ConfigError, match="no runs under .* config.yaml and metrics.jsonl"):
        find_runs([tmp_path])


def test_variant_and_seed_from_run_json_else_config(tmp_path):
    r1 = load_run(fake_run(tmp_path / "r1", name="cfgname", seed=3))
    r2 = load_run(fake_run(tmp_path / "r2", name="cfgname", seed=3, meta={"variant": "moe", "seed": 7}))
    assert (r1.variant, r1.seed) == ("cfgname", 3)
    assert (r2.variant, r2.seed) == ("moe", 7)


def test_group_by_variant_mean_and_sample_std_over_seeds(tmp_path):
    runs = [load_run(fake_run(tmp_path / f"a{s}", name="a", seed=s, val=(3.0, v))) for s, v in ((1, 1.2), (0, 1.0))]
    runs.append(load_run(fake_run(tmp_path / "b", name="b", val=(3.0, 0.9))))
    variants = group_runs(runs)
    assert [v.label for v in variants] == ["a", "b"]
    assert [r.seed for r in variants[0].runs] == [0, 1]
    rows = results_rows(variants)
    assert [r["variant"] for r in rows] == ["b", "a"]  # best validation loss first
    a = rows[1]
    assert a["n"] == 2 and a["val_loss_mean"] == pytest.approx(1.1)
    assert a["val_loss_std"] == pytest.approx(math.sqrt(0.02))  # sample std (n - 1)
    assert a["tokens_per_s"] == pytest.approx(150.0) and a["steps"] == 20


def test_sweep_grid_points_are_groups_and_seeds_their_runs(tmp_path):
    runs = [load_run(fake_run(tmp_path / f"moe-{lr}-s{seed}", meta={
        "sweep": "lr", "variant": "moe", "params": {"optim.lr": lr}, "seed": seed}))
        for lr in (0.001, 0.003) for seed in (0, 1)]
    variants = group_runs(runs)
    assert [(v.label, [r.seed for r in v.runs]) for v in variants] == [
        ("moe/optim.lr=0.001", [0, 1]), ("moe/optim.lr=0.003", [0, 1])]


def test_best_over_keeps_each_variants_best_setting(tmp_path):
    runs = [load_run(fake_run(tmp_path / f"{name}-{lr}-{seed}", val=(3.0, loss + 0.01 * seed), meta={
        "sweep": "lr", "variant": name, "params": {"optim.lr": lr, "model.d_model": 16}, "seed": seed}))
        for name, lr, loss in (("a", 0.001, 2.0), ("a", 0.003, 1.5), ("b", 0.001, 1.7), ("b", 0.003, 1.9))
        for seed in (0, 1)]
    variants = group_runs(runs, best_over=["optim.lr"])
    assert [(v.label, v.setting, v.tried, len(v.runs)) for v in variants] == [
        ("a/model.d_model=16", "optim.lr=0.003", 2, 2), ("b/model.d_model=16", "optim.lr=0.001", 2, 2)]
    assert variants[1].mean("val_loss") == pytest.approx(1.705)
    with pytest.raises(ConfigError, match=r"best-over keys \['optim.lrr'\] are not grid keys .*optim.lr"):
        group_runs(runs, best_over=["optim.lrr"])


def test_same_variant_of_two_sweeps_stays_apart(tmp_path):
    runs = [load_run(fake_run(tmp_path / s, meta={"sweep": s, "variant": "moe", "seed": 0})) for s in ("s1", "s2")]
    assert [v.label for v in group_runs(runs)] == ["s1/moe", "s2/moe"]


def test_optimizer_table_only_when_optimizers_differ_and_best_over_lr(tmp_path):
    runs = [load_run(fake_run(tmp_path / "adam-lo", name="adam-lo", lr=1e-4, val=(3.0, 2.0))),
            load_run(fake_run(tmp_path / "adam-hi", name="adam-hi", lr=1e-3, val=(3.0, 1.5)))]
    assert optimizer_table(group_runs(runs)) is None
    runs.append(load_run(fake_run(tmp_path / "lion", name="lion", optim="lion", lr=3e-4, val=(3.0, 1.8))))
    table = optimizer_table(group_runs(runs))
    assert [r[:4] for r in table.rows] == [["adamw", "adam-hi", "0.001", "2"], ["lion", "lion", "0.0003", "1"]]


# ---------------------------------------------------------------------------- Pareto front and ticks


def test_pareto_front_on_known_points():
    pts = [(1.0, 5.0), (2.0, 4.0), (2.0, 4.5), (3.0, 4.0), (4.0, 1.0), (5.0, 1.0), (0.5, 6.0)]
    # (2, 4.5) dominated by (2, 4); (3, 4) by (2, 4); (5, 1) by (4, 1)
    assert pareto_front(pts) == [6, 0, 1, 4]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # equal points dominate neither
    assert pareto_front([]) == []


def test_log_ticks_show_at_least_three_round_values():
    assert log_ticks(50, 5e4) == [100, 1000, 10000]
    assert log_ticks(150, 1200) == [200, 500, 1000]
    assert log_ticks(1.3e6, 2.6e6) == [1.5e6, 2e6, 2.5e6]


def test_every_figure_is_left_out_without_data():
    colors = plots.palette(["a"])
    assert plots.loss_curves({}, {}, colors) is None
    assert plots.pareto({"x": [plots.Point("a", 1.0, 2.0)]}, colors) is None  # one variant: no front to draw
    assert plots.expert_load({}) is None
    assert plots.experts_per_token({}, colors) is None
    assert plots.router_entropy({}, {}, colors) is None
    assert plots.per_layer_bars({"a": {}}, colors, "y") is None


def test_depth_layers_a_method_does_not_route_count_as_fully_processed(tmp_path):
    run = load_run(fake_run(tmp_path / "mod", name="mod"))
    run.config["model"] = {"n_layer": 4, "depth": {"name": "mod"}}
    run.records[-1].update({"layer1/processed": 0.125, "layer3/processed": 0.25, "layer3/processed/domain0": 0.5})
    assert _processed(run) == {(0, ""): 1.0, (1, ""): 0.125, (2, ""): 1.0, (3, ""): 0.25}


# ---------------------------------------------------------------------------- pages


def _check_pages(out: Path, expected_figures: set[str]) -> str:
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    pngs = {p.stem for p in out.glob("*.png")}
    assert pngs == expected_figures
    for p in out.glob("*.png"):
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, p
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all(r.startswith("data:image/png;base64,") or r.startswith("#") for r in refs)
    anchors = set(re.findall(r'id="([^"]+)"', html))
    assert all(r[1:] in anchors for r in refs if r.startswith("#"))
    assert html.count("data:image/png;base64,") == len(expected_figures)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(f"{f}.png" for f in expected_figures)
    assert all((out / link).is_file() for link in links)
    return html


def test_report_from_metrics_only_draws_what_the_metrics_hold(tmp_path):
    fake_run(tmp_path / "runs" / "dense-s0", name="dense", seed=0, val=(3.0, 2.0), flops=1e6, active=4e5)
    fake_run(tmp_path / "runs" / "dense-s1", name="dense", seed=1, val=(3.1, 2.1), flops=1e6, active=4e5)
    fake_run(tmp_path / "runs" / "moe", name="moe", val=(3.0, 1.9), flops=1.1e6, active=4.2e5, moe_layers=2)
    rep = make_report([tmp_path / "runs"], tmp_path / "out")
    expected = {"loss_curves", "pareto", "router_entropy", "domain_mi", "sink_share"}
    assert set(rep.figures) == expected  # no checkpoints: no expert load, histogram or depth figure
    html = _check_pages(tmp_path / "out", expected)
    assert "2.0500 ± 0.0707" in html and "<td>moe</td>" in html
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["variant"] for r in summary["rows"]] == ["moe", "dense"]


def test_single_run_without_costs_has_no_pareto_figure(tmp_path):
    fake_run(tmp_path / "r", val=(3.0, 2.0))
    rep = make_report([tmp_path / "r"], tmp_path / "out", analyse=False)
    assert "pareto" not in rep.figures and "loss_curves" in rep.figures


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real `gatelab compare` directory: a tiny MoE and a tiny MoD variant, 4 steps each."""
    root = tmp_path_factory.mktemp("cmp")
    exp = root / "exp.yaml"
    exp.write_text(
        "base:\n  model: {n_layer: 2, d_model: 16, block: {mixer: {n_head: 2}}}\n"
        "  data: {seq_len: 16, batch_size: 4, corpus: {name: synthetic, n_docs: 300}}\n"
        "  train: {steps: 4}\n  eval: {every: 2, batches: 1}\n  log: {every: 1, progress: false}\n"
        "variants:\n  moe: {model: {block: {ffn: {name: moe, n_experts: 4, k: 2}}}}\n"
        "  mod: {model: {depth: {name: mod, capacity: 0.5, every: 2}}, optim: {name: lion, lr: 0.0003}}\n")
    assert main(["compare", str(exp), "--out", str(root / "cmp")]) == 0
    return root


def test_cli_report_end_to_end_on_trained_runs(trained, capsys):
    out = trained / "rep"
    assert main(["report", str(trained / "cmp"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 runs, 2 variants" in printed and "report.html" in printed
    expected = {"loss_curves", "pareto", "expert_load", "experts_per_token", "router_entropy", "domain_mi",
                "sink_share", "depth_processed"}
    html = _check_pages(out, expected)
    assert "<h2 id=\"s1\">Optimizers</h2>" in html  # moe uses adamw, mod uses lion
    for run in ("moe", "mod"):
        assert (trained / "cmp" / "runs" / run / "analysis.json").is_file()
    assert "ckpt-0000004 (analysed)" in (out / "report.md").read_text()


def test_cli_report_without_analysis_leaves_checkpoint_figures_out(trained, tmp_path):
    assert main(["report", str(trained / "cmp" / "runs" / "moe"), str(trained / "cmp" / "runs" / "mod"),
                 "--out", str(tmp_path / "o"), "--no-analysis"]) == 0
    figures = {p.stem for p in (tmp_path / "o").glob("*.png")}
    assert "expert_load" not in figures and "experts_per_token" not in figures
    assert {"loss_curves", "router_entropy", "depth_processed"} <= figures  # MoD logs processed while training


def test_cli_best_over_before_runs_and_bad_key(tmp_path, capsys):
    for lr in (0.001, 0.003):
        fake_run(tmp_path / "sw" / f"lr{lr}", val=(3.0, 1000 * lr), meta={"variant": "a", "params": {"optim.lr": lr}})
    assert main(["report", "--best-over", "optim.lr", str(tmp_path / "sw"), "--out", str(tmp_path / "o")]) == 0
    assert "| a (optim.lr=0.001, best of 2) |" in (tmp_path / "o" / "report.md").read_text()
    assert main(["report", str(tmp_path / "sw"), "--best-over", "lr", "--out", str(tmp_path / "o2")]) == 2
    assert "best-over keys ['lr'] are not grid keys" in capsys.readouterr().err


def test_cli_report_on_a_dir_without_runs_exits_2_with_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no runs under" in err
    assert not (tmp_path / "o").exists()


def _chromium() -> str | None:
    return next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium/Chrome on PATH")
def test_html_renders_in_headless_chromium(trained, tmp_path):
    out = tmp_path / "rep"
    make_report([trained / "cmp"], out)
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--screenshot={shot}", "--window-size=1280,2400", (out / "report.html").resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20000  # a page of figures, not a blank screen

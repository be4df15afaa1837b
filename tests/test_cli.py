"""The gatelab CLI: every command end to end on a tiny config, and exit code 2 on bad input."""
import json
import subprocess
import sys

import pytest

from gatelab.cli import main, parse_overrides

TINY = ["--model.d_model", "32", "--model.n_layer", "2", "--model.block.mixer.n_head", "2",
        "--data.seq_len", "32", "--data.batch_size", "4", "--train.steps", "6", "--eval.batches", "1",
        "--log.progress", "false", "--log.every", "2"]


def test_parse_overrides_forms():
    assert parse_overrides(["--a.b", "1", "--c.d=x=y"]) == [("a.b", "1"), ("c.d", "x=y")]


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--model.n_layr", "2"], "unknown config key 'model.n_layr' (did you mean 'n_layer'?)"),
    (["train", "--bogus"], "unrecognized argument '--bogus'"),
    (["train", "--model.n_layer"], "needs a value"),
    (["train", "--optim.lr", "-3"], "Invalid learning rate"),
    (["eval", "/nonexistent"], "is not a run directory"),
    (["compare", "/nonexistent.yaml"], "does not exist"),
    (["generate", "x", "--max-new-tokens", "abc"], "invalid int value"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as ei:
        raise SystemExit(main(argv))
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1, err


def test_train_eval_generate_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "val_loss\t" in out
    assert main(["generate", str(run), "--prompt", "Once", "--max-new-tokens", "8", "--temperature", "0"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Once")
    # resume with a larger budget continues from step 6
    assert main(["train", "--out", str(run), "--resume", *TINY, "--train.steps", "8"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 8 and steps == sorted(steps)


def test_print_config(capsys):
    assert main(["train", "--print-config", "--model.n_layer", "3"]) == 0
    assert "n_layer: 3" in capsys.readouterr().out


def test_prepare_then_train_on_tokens(tmp_path):
    out = tmp_path / "tok"
    assert main(["prepare", "--out", str(out), "--data.corpus.name", "shakespeare"]) == 0
    assert (out / "train.bin").is_file() and (out / "meta.json").is_file()
    run = tmp_path / "run"
    argv = ["train", "--out", str(run), *TINY, "--data.corpus.name", "tokens", "--data.corpus.path", str(out)]
    assert main(argv) == 0


def test_compare_writes_table_and_report(tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "base:\n  model: {n_layer: 1, block: {mixer: {n_head: 2}}}\n  data: {seq_len: 32, batch_size: 4}\n"
        "  train: {steps: 4}\n  eval: {batches: 1}\n  log: {progress: false}\n"
        "variants:\n  small: {model: {d_model: 16}}\n  wide: {model: {d_model: 32}}\n")
    assert main(["compare", str(exp), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "| small" in out and "| wide" in out and "val loss" in out
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "| wide" in report and (tmp_path / "rep" / "loss_curves.png").stat().st_size > 1000
    rows = json.loads((tmp_path / "rep" / "results.json").read_text())["rows"]
    assert rows[0]["params"] < rows[1]["params"]


def test_compare_validates_every_variant_before_training(tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text("variants:\n  ok: {}\n  broken: {model: {d_modle: 8}}\n")
    assert main(["compare", str(exp), "--out", str(tmp_path / "rep")]) == 2
    assert "variant 'broken'" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


def test_console_script_help():
    res = subprocess.run([sys.executable, "-m", "gatelab.cli", "train", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--resume" in res.stdout and "dotted override" in res.stdout

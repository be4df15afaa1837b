"""The claims suite: registry, specs, verdict rules, each claim's evaluate on synthetic
records, and the runner end to end on one claim with a tiny override budget."""
import json
import math

import pytest

from gatelab.cli import build_parser, main
from gatelab.core.errors import ConfigError
from gatelab.lab.claims import (Claim, Finding, available, compare, results_table, run_claim, run_claims, select,
                                spec_for)
from gatelab.lab.claims import attention, depth, moe, optim, quant
from gatelab.lab.claims.base import metric, values
from gatelab.lab.sweep import expand

EXPECTED = {"gated_attention", "gated_attention_lr", "top_p", "null_experts", "fine_grained", "aux_free", "expert_choice", "gateskip",
            "skip_middle", "mod", "optimizers", "hgf"}


def rec(variant, seed, params=None, status="finished", **summary):
    return {"run_id": f"{variant}/seed{seed}", "variant": variant, "seed": seed, "params": params or {},
            "status": status, "summary": summary}


def test_registry_lists_every_claim_in_methods_order():
    claims = available()
    assert {c.name for c in claims} == EXPECTED
    numbers = [c.number for c in claims]
    assert numbers[:4] == ["1", "2", "§2.7", "3"] and numbers[-1] == "19/21/22"


def test_unknown_claim_is_a_one_line_config_error_listing_names():
    with pytest.raises(ConfigError) as e:
        select(["top_q"])
    msg = str(e.value)
    assert "unknown claim 'top_q'" in msg and "did you mean 'top_p'" in msg and "gateskip" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("claim", [c for c in available() if c.sweep is not None], ids=lambda c: c.name)
def test_every_runnable_claim_spec_expands_and_validates(claim):
    runs = expand(spec_for(claim, 3))
    variants = set(claim.sweep["variants"])
    assert {r.variant for r in runs} == variants
    assert sorted({r.seed for r in runs}) == [0, 1, 2]
    assert all(r.config.train.steps == 300 for r in runs)  # the fixed budget, not a per-claim tweak


NOT_RUNNABLE = Claim("missing_method", "99", "a method gatelab lacks", "pub", "set", None,
                     lambda records: [Finding("method < baseline", "-", "not runnable")],
                     missing="the method is not implemented")


def test_spec_rejects_zero_seeds_and_not_runnable_claims():
    with pytest.raises(ConfigError, match="seeds"):
        spec_for(select(["mod"])[0], 0)
    with pytest.raises(ConfigError, match="not runnable: the method is not implemented"):
        spec_for(NOT_RUNNABLE, 3)


# ---------------------------------------------------------------------------- verdict rules


def test_compare_yes_no_no_effect_and_p():
    a, b = [1.0, 1.1, 0.9], [2.0, 2.1, 1.9]  # std 0.1 each, gap 1.0
    yes = compare("a < b", a, b, "less")
    assert (yes.verdict, yes.n) == ("yes", "3 vs 3") and yes.p < 1e-3
    assert yes.measured == "1.0000 ± 0.1000 vs 2.0000 ± 0.1000"
    no = compare("b < a", b, a, "less")
    assert no.verdict == "no" and no.p > 0.999
    inside = compare("a < b", [1.0, 1.2, 0.8], [1.1, 1.3, 0.9], "less")  # gap 0.1 <= std 0.2
    assert inside.verdict == "no effect" and 0.05 < inside.p < 0.5
    assert compare("b > a", b, a, "greater").verdict == "yes"
    assert compare("a > b", a, b, "greater").verdict == "no"


def test_compare_parity_accepts_no_effect_and_better_rejects_worse():
    base = [2.0, 2.1, 1.9]
    assert compare("a ~ b", [2.05, 2.15, 1.95], base, "parity").verdict == "yes"  # inside the spread
    assert compare("a ~ b", [1.0, 1.1, 0.9], base, "parity").verdict == "yes"  # better
    assert compare("a ~ b", [3.0, 3.1, 2.9], base, "parity").verdict == "no"  # clearly worse


def test_compare_with_missing_or_single_samples():
    assert compare("a < b", [], [1.0], "less").verdict == "no data"
    one = compare("a < b", [1.0], [2.0], "less")
    assert one.verdict == "yes" and math.isnan(one.p)  # n = 1: the sign only, no test


def test_values_and_layer_averaged_metric():
    r = rec("moe", 0, **{"eval/layer0/ffn/max_vio": 0.2, "eval/layer1/ffn/max_vio": 0.4, "val_loss": 2.0})
    assert metric(r, "eval/layer*/ffn/max_vio") == pytest.approx(0.3)
    assert math.isnan(metric(r, "eval/layer*/ffn/load_cv"))
    recs = [rec("moe", 1, val_loss=3.0), r, rec("moe", 2, status="failed"), rec("dense", 0, val_loss=9.0)]
    assert values(recs, "moe", "val_loss") == [2.0, 3.0]


# ---------------------------------------------------------------------------- claim evaluations


def test_aux_free_direction_holds_and_fails():
    def recs(vio):
        return [rec(v, s, **{"eval/layer0/ffn/max_vio": vio[v] + 0.01 * s, "val_loss": 2.0 + 0.01 * s})
                for v in ("none", "aux", "bias") for s in range(3)]

    holds = moe.evaluate_aux_free(recs({"none": 1.0, "aux": 0.5, "bias": 0.05}))
    assert [f.verdict for f in holds] == ["yes", "yes", "yes"]
    fails = moe.evaluate_aux_free(recs({"none": 1.0, "aux": 0.05, "bias": 0.5}))
    assert fails[0].verdict == "no"


def test_top_p_counts_realised_experts_against_two():
    recs = []
    for s in range(3):
        recs += [rec("top2", s, val_loss=2.0 + 0.01 * s),
                 rec("topp", s, val_loss=1.9 + 0.01 * s, **{"eval/layer0/ffn/experts_per_token": 1.6 + 0.05 * s}),
                 rec("topp_no_entropy", s, val_loss=1.95 + 0.01 * s,
                     **{"eval/layer0/ffn/experts_per_token": 5.0 + 0.1 * s})]
    loss, k, drift, _ = moe.evaluate_top_p(recs)
    assert (loss.verdict, k.verdict, drift.verdict) == ("yes", "yes", "yes")
    assert k.p < 0.01 and k.n == "3"


def test_gateskip_saved_within_ten_percent():
    def r(seed, losses, saved, variant="gateskip_ramp"):
        s = {}
        for keep, loss, sv in zip(depth.KEEPS, losses, saved):
            for sel, bump in (("gate", 0.0), ("random", 0.5)):
                s[depth._key(keep, sel, "val_loss")] = loss + bump
                s[depth._key(keep, sel, "saved")] = sv
        return rec(variant, seed, **s)

    saved = [-0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.4]
    graceful = r(0, [2.0, 2.0, 2.05, 2.1, 2.15, 2.19, 3.0], saved)  # keep 0.75 is +9.5%
    assert depth.saved_within(graceful) == pytest.approx(0.15)
    steep = r(1, [2.0, 2.5, 2.6, 2.7, 2.8, 2.9, 4.0], saved)
    assert depth.saved_within(steep) == pytest.approx(-0.1)  # only the full model qualifies
    findings = depth.evaluate_gateskip([graceful, steep, r(2, [2.0, 2.0, 2.05, 2.1, 2.15, 2.19, 3.0], saved),
                                        r(0, [2.0] * 7, saved, "gateskip")])
    assert findings[0].n == "3" and findings[0].measured.startswith("0.067 ± 0.144")
    assert findings[1].verdict == "yes"  # gate-ranked skipping beats random by 0.5 at keep 0.9
    assert "keep 0.75" in findings[0].note and "without ramp" in findings[2].check
    assert findings[2].measured.startswith("0.400") and findings[3].n == "1 vs 1"


def test_skip_middle_compares_with_the_deepest_cheaper_dense_model():
    def recs(skip_flops, skip_loss):
        return [rec(v, s, val_loss=loss + 0.01 * s, flops_per_token=f)
                for v, loss, f in (("dense_l4", 2.0, 4.0), ("dense_l5", 1.9, 5.0), ("skip_middle_l6", skip_loss,
                                                                                  skip_flops)) for s in range(3)]

    (holds,) = depth.evaluate_skip_middle(recs(5.5, 1.95))
    assert holds.verdict == "yes" and "compared with dense_l5" in holds.note and "dense 5 layers" in holds.check
    (fails,) = depth.evaluate_skip_middle(recs(4.5, 1.5))
    assert fails.verdict == "no" and "compared with dense_l4" in fails.note


def test_mod_and_hgf_and_optimizers_evaluate():
    mod_recs = [rec(v, s, val_loss=loss + 0.001 * s, flops_per_token=f)
                for v, loss, f in (("dense_l4", 2.0, 10.0), ("mod_l4", 2.0, 6.0), ("dense_l2", 2.3, 5.5))
                for s in range(3)]
    eq_flops, parity = depth.evaluate_mod(mod_recs)
    assert (eq_flops.verdict, parity.verdict) == ("yes", "yes")
    assert "= 1.09" in eq_flops.note and "= 0.60" in parity.note

    hgf_recs = [rec(v, s, val_loss=loss + 0.01 * s, **({"memory/overhead_vs_ternary": 0.11} if v == "hgf" else {}))
                for v, loss in (("fp", 1.0), ("bitnet", 1.4), ("hgf", 1.2)) for s in range(3)]
    assert quant.recovered(hgf_recs) == pytest.approx([0.5, 0.5, 0.5])
    assert [f.verdict for f in quant.evaluate(hgf_recs)] == ["yes", "yes", "yes", "yes"]

    def o(v, lr, s, loss):
        return rec(v, s, {"optim.lr": lr}, val_loss=loss + 0.01 * s)

    opt_recs = ([o("adamw", lr, s, loss) for lr, loss in ((1e-3, 2.2), (3e-3, 2.0), (1e-2, 2.4)) for s in range(3)]
                + [o("lion", lr, s, loss) for lr, loss in ((1e-4, 2.3), (3e-4, 1.9), (1e-3, 2.5)) for s in range(3)]
                + [o("adabelief", 3e-3, s, 2.0) for s in range(3)]
                + [o("dadapt_adam", 1.0, s, 2.5) for s in range(3)])
    ratio, lion, belief, dadapt = optim.evaluate(opt_recs)
    assert ratio.verdict == "yes" and "= 10" in ratio.measured
    assert (lion.verdict, belief.verdict, dadapt.verdict) == ("yes", "yes", "no")
    assert "lion best lr 0.0003 of 3" in lion.note


def test_gated_attention_reports_whether_a_sink_formed():
    recs = [rec(v, s, val_loss=2.0, f_attn=fa) for v, fa in
            (("base", 0.5), ("headwise", 0.07), ("elementwise", 0.05), ("ns_sigmoid", 0.4)) for s in range(2)]
    assert "a sink formed" in attention.evaluate(recs)[2].note
    low = [{**r, "summary": {**r["summary"], "f_attn": 0.03}} for r in recs]
    assert "no sink formed" in attention.evaluate(low)[2].note
    assert 0.05 < attention.uniform_first_token_share(64) < 0.07


def lr_recs(base_losses, gated_losses):
    """Records of the lr claim: per variant, a mean val loss per lr multiplier (None: diverged)."""
    out = []
    for variant, losses in (("base", base_losses), ("headwise", gated_losses)):
        for lr, loss in zip(attention.LRS, losses):
            for s in range(3):
                params = {"optim.lr": lr}
                out.append(rec(variant, s, params, status="failed") if loss is None
                           else rec(variant, s, params, val_loss=loss + 0.01 * (s - 1)))
    return out


def test_gated_attention_lr_direction_holds_fails_and_ties():
    assert attention.LRS == pytest.approx([3e-3, 6e-3, 1.2e-2, 2.4e-2])
    holds = attention.evaluate_lr(lr_recs([2.0, 1.9, 2.3, None], [2.0, 1.9, 1.93, 2.5]))
    assert holds[0].verdict == "yes" and holds[0].measured == "0.012 vs 0.006"
    assert "base 0.003: 2.0000, 0.006: 1.9000, 0.012: 2.3000, 0.024: diverged" in holds[0].note
    assert [f.verdict for f in holds[1:]] == ["no effect", "no effect", "yes", "no data"]
    fails = attention.evaluate_lr(lr_recs([2.0, 1.9, 1.94, 2.1], [2.0, 1.9, None, None]))
    assert fails[0].verdict == "no" and fails[0].measured == "0.006 vs 0.012"
    tie = attention.evaluate_lr(lr_recs([2.0, 1.95, 1.9, 1.9], [2.0, 1.95, 1.9, 1.9]))
    assert tie[0].verdict == "no effect" and "never reached the baseline's limit" in tie[0].note
    one_seed_failed = lr_recs([2.0, 1.9, 1.92, 1.91], [2.0, 1.9, 1.92, 1.91])
    one_seed_failed[-1] = rec("headwise", 2, {"optim.lr": attention.LRS[-1]}, status="failed")
    assert attention.evaluate_lr(one_seed_failed)[0].verdict == "no"  # a diverged seed makes the lr unstable
    assert attention.evaluate_lr([])[0].verdict == "no data"


# ---------------------------------------------------------------------------- runner


TINY = [("train.steps", "3"), ("schedule.warmup_steps", "1"), ("eval.batches", "1"), ("data.seq_len", "16"),
        ("data.batch_size", "2"), ("model.d_model", "32"), ("model.n_layer", "2"), ("log.every", "1")]


def test_runner_end_to_end_on_one_claim_writes_and_resumes(tmp_path):
    logs = []
    results = run_claims(["gateskip"], tmp_path, seeds=2, overrides=TINY, echo=logs.append)
    (res,) = results
    assert res.runs == 4 and not res.failed
    assert [f.verdict for f in res.findings][0] in ("yes", "no", "no effect")
    assert res.findings[1].n == "2 vs 2" and res.findings[1].p is not None and len(res.findings) == 4
    md = (tmp_path / "claims.md").read_text()
    assert "[12] GateSkip" in md and "train.steps=3" in md and "NOT the claims budget" in md
    data = json.loads((tmp_path / "claims.json").read_text())
    assert data["seeds"] == 2 and data["results"][0]["name"] == "gateskip"
    assert (tmp_path / "gateskip" / "runs" / "gateskip_ramp" / "seed0" / "claim_probe.json").is_file()
    logs.clear()
    again = run_claims(["gateskip"], tmp_path, seeds=2, overrides=TINY, echo=logs.append)
    assert sum("skipped" in line for line in logs) == 4  # nothing retrained
    assert [f.measured for f in again[0].findings] == [f.measured for f in res.findings]
    report = run_claims(["mod", "gateskip"], tmp_path, seeds=2, overrides=TINY, train=False, echo=logs.append)
    assert [(r.runs, r.not_run) for r in report] == [(0, 6), (4, 0)]
    assert report[0].findings[0].verdict == "no data"
    assert "[14] Mixture-of-Depths 12.5%: 0 of 6 runs done" in (tmp_path / "claims.md").read_text()
    run_claims(["mod"], tmp_path, seeds=2, overrides=TINY, train=False, echo=logs.append)
    md = (tmp_path / "claims.md").read_text()  # claims run earlier into the directory stay in the report
    assert "[12] GateSkip" in md and md.index("[12] GateSkip") < md.index("[14] Mixture-of-Depths")


def test_not_runnable_claim_is_reported_not_faked(tmp_path):
    res = run_claim(NOT_RUNNABLE, tmp_path)
    assert res.runs == 0 and [f.verdict for f in res.findings] == ["not runnable"]
    assert "not runnable: the method is not implemented" in results_table([res])


def test_table_shows_claim_once_and_formats_p():
    from gatelab.lab.claims import ClaimResult

    r = ClaimResult("x", "9", "title", "pub", "set", [Finding("c1", "m1", "yes", 0.0123, "3 vs 3"),
                                                      Finding("c2", "m2", "no effect", float("nan"), "1 vs 1")])
    lines = results_table([r]).splitlines()
    assert "[9] title" in lines[2] and "[9] title" not in lines[3]
    assert "0.012" in lines[2] and "n/a" in lines[3]


def test_cli_claims_list_unknown_and_override_values_not_taken_as_names(capsys):
    assert main(["claims", "--list"]) == 0
    assert "gateskip" in capsys.readouterr().out
    assert main(["claims", "nope"]) == 2
    assert "unknown claim 'nope'" in capsys.readouterr().err
    args, rest = build_parser().parse_known_args(["claims", "--train.steps", "3", "mod", "--seeds", "2"])
    assert (args.names, args.seeds, rest) == (["mod"], 2, ["--train.steps", "3"])

"""The confirmation split: samples disjoint from calibration and eval that no trial sees, on which the export's drop
is confirmed once; a candidate whose drop does not hold there is not exported and the next one is; the eval set's
resolution is stated; bad settings are one line; a resumed study keeps its split."""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import optuna
import pytest
from conftest import write_experiment
from test_hostile import assert_one_line_error, cli

from autoquant import load_experiment, search
from autoquant.data import Dataset, split
from autoquant.errors import DataError
from autoquant.search import Confirmation
from autoquant.search import trial_attrs as attrs
from autoquant.search.confirm import Z, noise_at_limit, resolution
from autoquant.zoo import catalog

SIZES = {"calibration_size": 200, "eval_size": 400}


def test_the_confirmation_split_is_disjoint_and_moves_no_other_split():
    data = Dataset({"x": np.arange(1000, dtype=np.float32)[:, None]}, np.arange(1000))
    without = split(data, calibration=200, eval=300, train=100, seed=3)
    auto = split(data, calibration=200, eval=300, train=100, seed=3, confirm=150)
    rows = {name: set(getattr(auto, name).y.tolist()) for name in ("train", "calibration", "eval", "confirm")}
    assert len(rows["confirm"]) == 150
    assert all(not (rows[a] & rows[b]) for a in rows for b in rows if a < b)
    for name in ("train", "calibration", "eval"):  # turning confirmation on moves no other sample
        assert getattr(auto, name).y.tolist() == getattr(without, name).y.tolist()
    assert without.confirm is None
    # asked for more than is left: what is left, unless the size was given explicitly
    assert len(split(data, calibration=200, eval=300, train=100, confirm=900).confirm) == 400
    with pytest.raises(DataError, match="data.confirm_size 900 needs 1500 samples"):
        split(data, calibration=200, eval=300, train=100, confirm=900, confirm_exact=True)


def test_the_pass_rule_is_the_limit_plus_the_one_sided_noise():
    c = Confirmation(trial=3, samples=400, accuracy=97.0, drop=1.5, stderr=0.5)
    assert c.allowed(1.0) == pytest.approx(1.0 + Z * 0.5) and c.passes(1.0) and not c.passes(0.5)
    assert c.interval == pytest.approx((1.5 - 1.96 * 0.5, 1.5 + 1.96 * 0.5))
    blind = Confirmation(trial=3, samples=400, accuracy=97.0, drop=1.01, stderr=math.nan)  # a metric without scores
    assert not blind.passes(1.0) and blind.passes(1.01)


def test_the_eval_sets_resolution_is_stated_and_a_limit_below_it_warned():
    # all-INT8 loses 0.7 pt (7 samples net of 1,000) with a standard error of 0.4 pt: about 16 samples changed. A plan
    # at 0.1 pt changes about 16 × 0.1 / 0.7 ≈ 2.3 of them: ±0.15 pt, above the limit; 2,292 samples would resolve it.
    text, warn = resolution(1000, 0.7, 0.4, 0.1, per_sample=True)
    assert warn and "limit 0.1 pt is 1 sample(s) of 1000" in text and "±0.40 pt" in text and "±0.15" in text
    assert "set data.eval_size to 2,292 or more" in text
    text, warn = resolution(1000, 0.7, 0.4, 1.0, per_sample=True)
    assert not warn and "resolve the limit of 1 pt" in text
    assert noise_at_limit(497, 7.65, 1.22, 1.0, per_sample=True) < 1.0  # the quickstart: its limit is resolved
    assert noise_at_limit(1000, 2.0, 0.5, 0.5, per_sample=False) == pytest.approx(0.125)  # cosine: by the drop


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """scikit-learn's digits as an npz beside the shipped digits CNN: (directory, rows of the confirmation split)."""
    from sklearn.datasets import load_digits

    tmp = tmp_path_factory.mktemp("confirm")
    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)
    np.savez(tmp / "clean.npz", x=x, y=y)
    perm = np.random.default_rng(0).permutation(len(x))
    confirm = perm[600:900]  # [calibration 200 | eval 400 | confirm 300]
    (shipped,) = catalog.SHIPPED.glob("digits_cnn-*.onnx")
    # Poison: noise far outside the calibrated ranges, labelled with what FP32 predicts for it: FP32 scores 100 %
    # there and a quantized model, whose ranges clip it, much less.
    noise = np.random.default_rng(1).uniform(-60, 60, size=x[confirm].shape).astype(np.float32)
    sess = ort.InferenceSession(str(shipped), providers=["CPUExecutionProvider"])
    poisoned_x, poisoned_y = x.copy(), y.copy()
    poisoned_x[confirm] = noise
    poisoned_y[confirm] = sess.run(None, {sess.get_inputs()[0].name: noise})[0].argmax(axis=1)
    np.savez(tmp / "poisoned.npz", x=poisoned_x, y=poisoned_y)
    return tmp, shipped


def experiment(tmp, model, npz, name, **search_cfg):
    return write_experiment(tmp / f"{name}.yaml", name=name, model={"onnx": str(model)},
                            data={"source": "npz", "path": str(npz), **SIZES, "confirm_size": 300},
                            eval={"latency_repeats": 2},
                            search={"trials": 8, "sensitivity_k": [], "max_accuracy_drop": 1.0, **search_cfg})


def test_no_trial_sees_the_confirmation_samples(digits_npz, tmp_path):
    """The same study on data whose confirmation rows are noise with random labels: every trial's figures are the
    same; only the confirmation differs (and says so)."""
    tmp, model = digits_npz
    runs = {}
    for kind in ("clean", "poisoned"):
        exp = experiment(tmp_path, model, tmp / f"{kind}.npz", f"digits_{kind}", objective="bitops")
        runs[kind] = search(load_experiment(exp), tmp_path / kind)
    clean, poisoned = runs["clean"], runs["poisoned"]
    a = optuna.load_study(study_name="digits_clean", storage=f"sqlite:///{tmp_path / 'clean' / 'study.db'}")
    b = optuna.load_study(study_name="digits_poisoned", storage=f"sqlite:///{tmp_path / 'poisoned' / 'study.db'}")
    for key in ("calibration_sha256", "eval_sha256"):
        assert a.user_attrs[key] == b.user_attrs[key]
    assert a.user_attrs["confirm_sha256"] != b.user_attrs["confirm_sha256"]

    def measured(study):
        return {attrs.plan(t).key(): (r.accuracy, r.accuracy_drop, r.output_mse, r.bitops_fraction)
                for t in study.trials if (r := attrs.result(t)) is not None}

    shared = measured(a).keys() & measured(b).keys()
    assert len(shared) >= 4
    assert all(measured(a)[k] == measured(b)[k] for k in shared)
    # the clean study's export is confirmed, its figures in the record; the poisoned one's confirmation cannot hold
    assert clean.met and clean.confirmation is not None and clean.confirmation.samples == 300
    record = json.loads(clean.export.record_path.read_text())
    assert record["objectives"]["confirm_samples"] == 300
    assert record["objectives"]["confirmed_accuracy_drop"] == pytest.approx(clean.confirmation.drop)
    assert not poisoned.met and poisoned.export is None and poisoned.refused
    assert not (tmp_path / "poisoned" / "best").exists()  # the first export is confirmed before it is written


def test_a_candidate_that_fails_confirmation_is_not_exported_and_the_next_is(digits_npz, tmp_path, capsys):
    """The search's export, its kept confirmation made to fail: `export` (which reads the study's confirmations)
    refuses it and exports the next candidate, confirmed, its figures in the record."""
    tmp, model = digits_npz
    exp = experiment(tmp_path, model, tmp / "clean.npz", "digits_next", objective="bitops", trials=10)
    code, out, err = cli(capsys, "search", exp, "--out", tmp_path / "run", "--json")
    assert code == 0, err
    first = json.loads(out.strip().splitlines()[-1])
    assert first["confirmed"]["trial"] == first["chosen_trial"]
    study = optuna.load_study(study_name="digits_next", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    kept = attrs.confirmations(study)[first["chosen_trial"]]
    attrs.add_confirmation(study, first["chosen_trial"], [kept[0], kept[1] - 50, kept[2] + 50, kept[3]])
    code, out, err = cli(capsys, "export", tmp_path / "run", "--out", tmp_path / "again", "--json")
    assert code == 0, err
    again = json.loads(out.strip().splitlines()[-1])
    assert first["chosen_trial"] in [r["trial"] for r in again["refused"]]
    assert again["chosen_trial"] != first["chosen_trial"] and again["confirmed"]["trial"] == again["chosen_trial"]
    record = json.loads((tmp_path / "again" / "record.json").read_text())
    assert record["objectives"]["confirmed_accuracy_drop"] == pytest.approx(again["confirmed"]["accuracy_drop"])


def test_a_resumed_study_keeps_its_confirmation_split_and_bad_sizes_are_one_line(digits_npz, tmp_path, capsys):
    tmp, model = digits_npz
    exp = experiment(tmp_path, model, tmp / "clean.npz", "digits_resume", trials=3)
    assert cli(capsys, "search", exp, "--out", tmp_path / "run", "--quiet")[0] == 0
    sections = json.loads(json.dumps(__import__("yaml").safe_load(exp.read_text())))
    sections["data"]["confirm_size"] = 100
    other = write_experiment(tmp_path / "digits_resume.yaml", **sections)
    assert_one_line_error(*cli(capsys, "search", other, "--out", tmp_path / "run", "--trials", "4")[::2],
                          "was run with another confirm sha256")
    for value, message in ((-1, "data.confirm_size must be at least 0"), ("many", "data.confirm_size must be int"),
                           (1.5, "data.confirm_size must be int"), (5000, "data.confirm_size 5000 needs")):
        sections["data"]["confirm_size"] = value
        bad = write_experiment(tmp_path / "bad.yaml", **sections)
        assert_one_line_error(*cli(capsys, "search", bad, "--out", tmp_path / "bad")[::2], message)


def test_a_search_states_its_eval_sets_resolution(digits_npz, tmp_path, capsys):
    tmp, model = digits_npz
    exp = experiment(tmp_path, model, tmp / "clean.npz", "digits_fine", trials=2, max_accuracy_drop=0.05)
    code, _, err = cli(capsys, "search", exp, "--out", tmp_path / "run")
    assert code in (0, 3), err
    line = next(x for x in err.splitlines() if "resolve" in x)
    assert line.startswith("autoquant: warning: limit 0.05 pt is 0.2 sample(s) of 400") and "data.eval_size to" in line

"""Linear probe (evaluate/probe.py, ``clarion probe``): the fit against scikit-learn and a
separable case, folds, the errors, and the command end to end beside zero-shot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clarion.cli import main
from clarion.evaluate.probe import assign_folds, fit_logistic, predict, probe_metrics

from test_zeroshot import labelled_copy, run  # noqa: F401  (run: a fixture, a tiny trained run)


def _blobs(n_per_class: int, n_classes: int, d: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d)) * 3
    x = np.concatenate([centres[c] + spread * rng.standard_normal((n_per_class, d)) for c in range(n_classes)])
    y = np.repeat(np.arange(n_classes), n_per_class)
    return torch.from_numpy(x), torch.from_numpy(y)


def test_fit_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = _blobs(15, 3, 4, spread=2.5, seed=0)  # overlapping classes: the optimum is interior
    for c in (0.1, 1.0, 10.0):
        w, b = fit_logistic(x, y, 3, c)
        reference = sklearn.LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(x.numpy(), y.numpy())
        np.testing.assert_allclose(predict(w, b, x).numpy(), reference.predict_proba(x.numpy()), atol=1e-6)
        np.testing.assert_allclose(w.numpy(), reference.coef_, atol=1e-4)


def test_fit_is_the_minimiser_of_the_stated_objective():
    """Zero gradient of Σ CE + ‖W‖²/(2C), by an explicit formula: Xᵀ(P − Y) + W/C = 0, Σ(P − Y) = 0."""
    x, y = _blobs(10, 4, 3, spread=2.0, seed=1)
    c = 0.5
    w, b = fit_logistic(x, y, 4, c)
    p = predict(w, b, x)
    onehot = torch.nn.functional.one_hot(y, 4).double()
    grad_w = (p - onehot).T @ x + w / c
    grad_b = (p - onehot).sum(0)
    assert grad_w.abs().max() < 1e-6 and grad_b.abs().max() < 1e-6


def test_separable_embeddings_are_probed_perfectly():
    x, y = _blobs(20, 5, 8, spread=0.05, seed=2)
    x = torch.nn.functional.normalize(x, dim=1)
    folds = assign_folds(y, 4)
    metrics = probe_metrics(x, y, list("abcde"), folds, c=10.0)
    assert metrics["accuracy_mean"] == 1.0 and metrics["accuracy_std"] == 0.0
    assert list(metrics["folds"]) == ["1", "2", "3", "4"]
    assert all(f["n_test"] == 25 and f["n_train"] == 75 for f in metrics["folds"].values())


def test_each_fold_is_scored_by_a_probe_fitted_on_the_other_folds():
    x, y = _blobs(12, 3, 4, spread=3.0, seed=3)
    folds = [str(i % 3 + 1) for i in range(len(y))]
    metrics = probe_metrics(x, y, ["a", "b", "c"], folds, c=1.0)
    accuracies = []
    for fold in ("1", "2", "3"):
        test = np.array([f == fold for f in folds])
        w, b = fit_logistic(x[~test], y[~test], 3, 1.0)
        accuracy = float((predict(w, b, x[test]).argmax(1) == y[test]).double().mean())
        assert metrics["folds"][fold]["accuracy"] == accuracy
        accuracies.append(accuracy)
    assert metrics["accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert metrics["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))


def test_assigned_folds_are_stratified_and_seeded():
    y = torch.tensor([0] * 10 + [1] * 7 + [2] * 3)
    folds = assign_folds(y, 5, seed=4)
    assert folds == assign_folds(y, 5, seed=4) and folds != assign_folds(y, 5, seed=5)
    assert sorted(set(folds)) == ["1", "2", "3", "4", "5"]
    assert [folds.count(str(k)) for k in range(1, 6)] == [4, 4, 4, 4, 4]
    for c, n in ((0, 10), (1, 7)):  # each class spread as evenly as its count allows
        counts = [sum(1 for f, t in zip(folds, y.tolist()) if t == c and f == str(k)) for k in range(1, 6)]
        assert max(counts) - min(counts) <= 1 and sum(counts) == n


def test_bad_inputs_are_clear_errors():
    x, y = _blobs(4, 2, 3, spread=1.0, seed=5)
    with pytest.raises(ValueError, match="at least two classes"):
        fit_logistic(x, torch.zeros(8, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="positive"):
        fit_logistic(x, y, 2, c=0.0)
    with pytest.raises(ValueError, match="at least two folds"):
        probe_metrics(x, y, ["a", "b"], ["1"] * 8)
    with pytest.raises(ValueError, match="at least two classes"):
        probe_metrics(x, torch.zeros(8, dtype=torch.long), ["a", "b"], ["1", "2"] * 4)
    # fold 2 holds all of class b: training for fold 1 sees one class only
    with pytest.raises(ValueError, match="other than 1 hold a single class"):
        probe_metrics(x, y, ["a", "b"], ["1"] * 4 + ["2"] * 4)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fit_logistic(bad, y, 2)


def test_cli_probe_beside_zeroshot(run, tone_data, tmp_path, capsys):  # noqa: F811
    data = labelled_copy(tone_data, tmp_path / "val.csv")  # 8 clips, 4 pitch classes, folds 1 and 2
    capsys.readouterr()
    assert main(["probe", str(run), "--data", str(data), "--json", str(tmp_path / "p.json"), "-q", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "p.json").read_text())
    assert printed["fold_source"] == "manifest" and list(printed["probe"]["folds"]) == ["1", "2"]
    assert printed["counts"]["clips"] == 8 and printed["counts"]["classes"] == 4
    assert all(f["n_test"] == 4 and f["n_train"] == 4 for f in printed["probe"]["folds"].values())
    for part in ("probe", "zeroshot"):
        assert 0.0 <= printed[part]["accuracy_mean"] <= 1.0
    # the zero-shot figures are `clarion zeroshot`'s on the same folds
    assert main(["zeroshot", str(run), "--data", str(data), "-q", "--device", "cpu"]) == 0
    zeroshot = json.loads(capsys.readouterr().out)
    assert printed["zeroshot"]["folds"] == {f: v["accuracy"] for f, v in zeroshot["folds"].items()}

    # without a fold column: folds are made (stratified); too few classes: a clear error
    plain = labelled_copy(tone_data, tmp_path / "plain.csv", lambda i, row: {k: v for k, v in row.items() if k != "fold"})
    assert main(["probe", str(run), "--data", str(plain), "--folds", "2", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["fold_source"] == "assigned"
    one = labelled_copy(tone_data, tmp_path / "one.csv", lambda i, row: {**row, "label": "tone"})
    assert main(["probe", str(run), "--data", str(one), "-q"]) == 2
    assert "at least two classes" in capsys.readouterr().err
    unlabelled = labelled_copy(tone_data, tmp_path / "none.csv", lambda i, row: {**row, "label": ""})
    assert main(["probe", str(run), "--data", str(unlabelled), "-q"]) == 2
    assert "has no labels" in capsys.readouterr().err

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from data_fixtures import write_nan_wav

from clarion.cli import main
from clarion.data.manifest import read_manifest, write_manifest
from clarion.evaluate.retrieval import t2a_ranks
from clarion.evaluate.zeroshot import (
    DEFAULT_PROMPT,
    average_templates,
    check_prompts,
    evaluate_zeroshot,
    fill_prompt,
    read_labels,
    sort_folds,
    zeroshot_metrics,
)
from clarion.rundir import load_model

from conftest import PITCHES, TINY

EYE3 = torch.eye(3, dtype=torch.float64)  # class c's text embedding is the basis vector e_c


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


# ---------------------------------------------------------------- the pure metric


def test_metrics_match_a_hand_computed_case():
    audio = unit(
        [0.9, 0.1, 0.0],  # true 0: scores ∝ (.9, .1, 0)  -> rank 1, predicted 0
        [0.1, 0.9, 0.3],  # true 0: scores ∝ (.1, .9, .3) -> rank 3, predicted 1
        [0.0, 0.6, 0.8],  # true 1: scores (0, .6, .8)    -> rank 2, predicted 2
        [0.0, 0.0, 1.0],  # true 2: scores (0, 0, 1)      -> rank 1, predicted 2
        [1.0, 0.0, 0.0],  # true 2: scores (1, 0, 0)      -> class 2 ties class 1 at 0: rank 3, predicted 0
    )
    m = zeroshot_metrics(audio, EYE3, torch.tensor([0, 0, 1, 2, 2]), ["dog", "rain", "car"])
    assert m["accuracy"] == pytest.approx(2 / 5)  # clips 0 and 3
    assert m["top5"] == 1.0  # C = 3 < 5: top-3, every clip hits
    assert m["per_class"] == pytest.approx({"dog": 1 / 2, "rain": 0.0, "car": 1 / 2})
    assert m["mean_per_class"] == pytest.approx(1 / 3)
    # rows = true class, columns = predicted
    assert m["confusion"] == [[1, 1, 0], [0, 0, 1], [1, 0, 1]]
    assert m["labels"] == ["dog", "rain", "car"] and m["n"] == 5
    assert "folds" not in m and "fold_mean_accuracy" not in m
    assert json.loads(json.dumps(m)) == m


def test_top5_counts_the_first_five_of_six_classes():
    text = torch.eye(6, dtype=torch.float64)
    audio = unit(
        [6, 5, 4, 3, 2, 1],  # true 4 ranks 5th -> top-5 hit
        [6, 5, 4, 3, 2, 1],  # true 5 ranks 6th -> miss
        [6, 5, 4, 3, 2, 1],  # true 0 ranks 1st -> hit
    )
    m = zeroshot_metrics(audio, text, torch.tensor([4, 5, 0]))
    assert m["top5"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(1 / 3)
    assert m["labels"] == ["0", "1", "2", "3", "4", "5"]
    assert m["per_class"]["1"] is None  # no clip of class 1
    assert m["mean_per_class"] == pytest.approx((0 + 0 + 1) / 3)


def test_ties_are_pessimistic():
    # a collapsed model: every score equal -> the true class ranks last
    audio, text = unit(*[[1.0, 0.0]] * 4), unit(*[[1.0, 0.0]] * 6)
    m = zeroshot_metrics(audio, text, torch.tensor([0, 1, 2, 5]))
    assert m["accuracy"] == 0.0 and m["top5"] == 0.0
    assert sum(m["confusion"][c][c] for c in range(6)) == 0
    # the true class tied with another one at the top is a miss, predicted as the other one
    m = zeroshot_metrics(unit([1.0, 1.0, 0.0]), EYE3, torch.tensor([1]))
    assert m["accuracy"] == 0.0 and m["confusion"][1] == [1, 0, 0]


def test_ranks_agree_with_retrieval_convention():
    g = torch.Generator().manual_seed(0)
    audio = F.normalize(torch.randn(200, 4, generator=g), dim=-1)
    text = F.normalize(torch.randn(7, 4, generator=g).round(), dim=-1)  # rounded: duplicate classes, ties
    text[3] = text[2]
    targets = torch.randint(0, 7, (200,), generator=g)
    m = zeroshot_metrics(audio, text, targets)
    ranks = t2a_ranks(audio.double() @ text.double().T, targets)
    assert m["accuracy"] == pytest.approx(float((ranks <= 1).double().mean()))
    assert m["top5"] == pytest.approx(float((ranks <= 5).double().mean()))
    confusion = torch.tensor(m["confusion"])
    assert int(confusion.sum()) == 200 and int(confusion.trace()) == round(m["accuracy"] * 200)
    assert confusion[2, 2] == confusion[3, 3] == 0  # classes 2 and 3 always tie: neither is ever a hit


def test_template_average_is_the_normalised_mean_of_normalised_embeddings():
    g = torch.Generator().manual_seed(1)
    text = torch.randn(3, 4, 8, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1])[:, None, None]
    expected = torch.zeros(4, 8, dtype=torch.float64)
    for c in range(4):
        mean = sum(text[t, c] / text[t, c].norm() for t in range(3)) / 3
        expected[c] = mean / mean.norm()
    assert torch.allclose(average_templates(text), expected)
    assert not torch.allclose(F.normalize(text.mean(0), dim=-1), expected)  # not the raw mean
    audio = F.normalize(torch.randn(30, 8, generator=g, dtype=torch.float64), dim=-1)
    targets = torch.randint(0, 4, (30,), generator=g)
    assert zeroshot_metrics(audio, text, targets) == zeroshot_metrics(audio, expected, targets)


def test_folds_are_scored_separately_and_averaged():
    audio = unit([1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0])
    targets = torch.tensor([0, 1, 1, 2, 0, 1])  # hits: 1, 0, 1, 1, 0, 1
    m = zeroshot_metrics(audio, EYE3, targets, folds=["2", "10", "2", "1", "10", "10"])
    assert list(m["folds"]) == ["1", "2", "10"]  # numeric order
    assert m["folds"]["1"] == {"accuracy": 1.0, "top5": 1.0, "n": 1}
    assert m["folds"]["2"] == {"accuracy": 1.0, "top5": 1.0, "n": 2}
    assert m["folds"]["10"]["accuracy"] == pytest.approx(1 / 3) and m["folds"]["10"]["n"] == 3
    assert m["fold_mean_accuracy"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)  # the pooled accuracy differs from the fold mean
    assert sort_folds({"b", "a", "10"}) == ["10", "a", "b"]


def test_metric_input_errors():
    with pytest.raises(ValueError, match="targets must lie"):
        zeroshot_metrics(unit([1, 0, 0]), EYE3, torch.tensor([3]))
    with pytest.raises(ValueError, match=r"need audio \[n, d\]"):
        zeroshot_metrics(unit([1, 0]), EYE3, torch.tensor([0]))
    with pytest.raises(ValueError, match="2 labels for 3 classes"):
        zeroshot_metrics(unit([1, 0, 0]), EYE3, torch.tensor([0]), ["a", "b"])
    with pytest.raises(ValueError, match="non-finite"):
        zeroshot_metrics(unit([1, 0, 0]) * math.nan, EYE3, torch.tensor([0]))


def test_prompt_and_label_file_checks(tmp_path):
    assert check_prompts(["a {label}", "the sound of {label}"]) == ["a {label}", "the sound of {label}"]
    assert check_prompts(DEFAULT_PROMPT) == [DEFAULT_PROMPT]
    assert fill_prompt(DEFAULT_PROMPT, "chirping_birds") == "This is a sound of chirping birds."
    assert fill_prompt("{label} {x}", "dog") == "dog {x}"
    for bad, message in ([["a sound"], "does not contain {label}"], [[], "at least one"], [["{label}"] * 2, "repeated"]):
        with pytest.raises(ValueError, match=message):
            check_prompts(bad)
    (tmp_path / "l.txt").write_text("dog\n\n  rain \ncar\n")
    assert read_labels(tmp_path / "l.txt") == ["dog", "rain", "car"]
    (tmp_path / "r.txt").write_text("dog\nrain\ndog\n")
    with pytest.raises(ValueError, match="repeated label"):
        read_labels(tmp_path / "r.txt")
    with pytest.raises(FileNotFoundError):
        read_labels(tmp_path / "missing.txt")


def test_manifest_fold_column(tmp_path):
    write_nan_wav(tmp_path / "a.wav")
    write_nan_wav(tmp_path / "b.wav")
    rows = [
        {"audio": "a.wav", "caption": "x", "label": "dog", "fold": 1},
        {"audio": "b.wav", "caption": "y", "label": "rain", "fold": 2},
        {"audio": "a.wav", "caption": "z", "label": "dog", "fold": 1},
    ]
    for name in ("m.csv", "m.jsonl"):
        write_manifest(tmp_path / name, rows)
        m = read_manifest(tmp_path / name)
        assert [r.fold for r in m.rows] == ["1", "2", "1"]
        assert m.folds == ["1", "2"] and m.labels == ["dog", "rain"]
    assert (tmp_path / "m.csv").read_text().splitlines()[0] == "audio,caption,label,fold"
    write_manifest(tmp_path / "n.csv", [{k: v for k, v in r.items() if k != "fold"} for r in rows])
    assert read_manifest(tmp_path / "n.csv").folds == [None, None]


# ---------------------------------------------------------------- end to end on a tiny trained run


@pytest.fixture(scope="module")
def run(tone_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("zs") / "run"
    args = ["train", "--train", str(tone_data["train"]), "--objective", "infonce", "--out", str(out),
            "--epochs", "2", "--batch-size", "16", "-q", *TINY]
    assert main(args) == 0
    return out


def labelled_copy(tone_data, path, edit=None):
    """The val tone manifest with absolute audio paths and a fold column (clip i in fold i % 2 + 1);
    ``edit(i, row)`` may change a row (per clip index i) or return None to drop it."""
    src = tone_data["val"]
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    clips = list(dict.fromkeys(r["audio"] for r in rows))
    out = []
    for r in rows:
        i = clips.index(r["audio"])
        row = {**r, "audio": str(src.parent / r["audio"]), "fold": str(i % 2 + 1)}
        row = edit(i, row) if edit else row
        if row is not None:
            out.append(row)
    write_manifest(path, out)
    return path


def test_cli_zeroshot_end_to_end(run, tone_data, tmp_path, capsys):
    data = labelled_copy(tone_data, tmp_path / "val.csv")
    capsys.readouterr()
    args = ["zeroshot", str(run), "--data", str(data), "--json", str(tmp_path / "zs.json"), "--device", "cpu", "-q",
            "--prompt", "a {label} tone", "--prompt", "{label} pitched beep"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((tmp_path / "zs.json").read_text())
    assert printed == metrics  # 4 classes: the confusion matrix is printed too
    labels = sorted(PITCHES)
    assert metrics["labels"] == labels and metrics["n"] == 8
    assert metrics["prompts"] == ["a {label} tone", "{label} pitched beep"]
    assert 0.0 <= metrics["accuracy"] <= metrics["top5"] == 1.0  # 4 classes: top-5 is top-4
    assert set(metrics["per_class"]) == set(labels)
    assert all(0.0 <= v <= 1.0 for v in metrics["per_class"].values())
    confusion = torch.tensor(metrics["confusion"])
    assert confusion.shape == (4, 4) and confusion.sum() == 8 and confusion.sum(1).tolist() == [2, 2, 2, 2]
    assert confusion.trace() / 8 == pytest.approx(metrics["accuracy"])
    assert list(metrics["folds"]) == ["1", "2"] and all(f["n"] == 4 for f in metrics["folds"].values())
    assert metrics["fold_mean_accuracy"] == pytest.approx(metrics["accuracy"])  # equal fold sizes
    assert metrics["skipped"] == 0
    assert metrics["counts"] == {"clips": 8, "classes": 4, "unlabelled_clips": 0, "undecodable_clips": 0, "bad_rows": 0}

    # the default prompt and a --labels file with an extra class (no clips): 5 classes
    (tmp_path / "labels.txt").write_text("\n".join([*labels, "silence"]) + "\n")
    assert main(["zeroshot", str(run), "--data", str(data), "--labels", str(tmp_path / "labels.txt"), "-q"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["prompts"] == [DEFAULT_PROMPT] and metrics["labels"] == [*labels, "silence"]
    assert metrics["per_class"]["silence"] is None and len(metrics["confusion"]) == 5


def test_unlabelled_and_undecodable_clips_are_skipped_and_counted(run, tone_data, tmp_path, caplog):
    write_nan_wav(tmp_path / "nan.wav")

    def edit(i, row):
        return {**row, "label": ""} if i == 0 else row

    data = labelled_copy(tone_data, tmp_path / "val.csv", edit)
    with open(data, "a", newline="") as fh:
        csv.writer(fh).writerow([str(tmp_path / "nan.wav"), "a broken clip", "low", "1"])  # audio,caption,label,fold
    cfg, model = load_model(run)
    manifest = read_manifest(data)
    assert len(manifest.clips) == 9
    metrics = evaluate_zeroshot(model, manifest, cfg, torch.device("cpu"))
    assert metrics["n"] == 7 and metrics["skipped"] == 2
    assert metrics["counts"]["unlabelled_clips"] == 1 and metrics["counts"]["undecodable_clips"] == 1
    assert sum(f["n"] for f in metrics["folds"].values()) == 7
    assert "have no label" in caplog.text and "could not be decoded" in caplog.text


def test_user_errors(run, tone_data, tmp_path, capsys):
    cfg, model = load_model(run)
    cpu = torch.device("cpu")
    unlabelled = labelled_copy(tone_data, tmp_path / "u.csv", lambda i, row: {**row, "label": ""})
    with pytest.raises(ValueError, match="has no labels"):
        evaluate_zeroshot(model, read_manifest(unlabelled), cfg, cpu)
    data = labelled_copy(tone_data, tmp_path / "val.csv")
    with pytest.raises(ValueError, match=r"2 label\(s\) not in the class list: 'middle', 'very high'"):
        evaluate_zeroshot(model, read_manifest(data), cfg, cpu, labels=["low", "high"])
    partial_folds = labelled_copy(tone_data, tmp_path / "f.csv", lambda i, row: {**row, "fold": "" if i == 3 else row["fold"]})
    with pytest.raises(ValueError, match="1 labelled clip.* no fold"):
        evaluate_zeroshot(model, read_manifest(partial_folds), cfg, cpu)

    (tmp_path / "labels.txt").write_text("low\nhigh\n")
    for args, message in [
        (["--prompt", "a sound"], "does not contain {label}"),
        (["--prompt", "{label}", "--labels", str(tmp_path / "labels.txt")], "not in the class list"),
        (["--labels", str(tmp_path / "missing.txt")], "labels file not found"),
    ]:
        capsys.readouterr()
        assert main(["zeroshot", str(run), "--data", str(data), "-q", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("clarion zeroshot: error:") and message in err[-1]
    assert main(["zeroshot", str(run), "--data", str(unlabelled), "-q"]) == 2
    assert "has no labels" in capsys.readouterr().err


def test_zeroshot_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["zeroshot", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: clarion zeroshot" in out and "--prompt TEMPLATE" in out and "--labels" in out

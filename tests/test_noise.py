import csv
import json
from collections import Counter

import pytest
import torch

from clarion.cli import main
from clarion.data.manifest import read_manifest
from clarion.data.noise import corrupt_captions
from clarion.evaluate.geometry import plan_mass_by_pair_kind

from conftest import TINY


def test_corruption_shuffles_a_seeded_fraction_and_lists_exactly_the_changed_pairs(tone_data):
    manifest = read_manifest(tone_data["train"])
    noisy, corrupted = corrupt_captions(manifest, 0.25, seed=3)
    changed = [i for i, (r, n) in enumerate(zip(manifest.rows, noisy.rows)) if r.caption != n.caption]
    assert len(changed) <= round(0.25 * len(manifest)) and len(changed) >= 0.8 * round(0.25 * len(manifest))
    assert Counter(noisy.captions) == Counter(manifest.captions)  # shuffled among themselves, nothing lost
    assert [r.audio for r in noisy.rows] == [r.audio for r in manifest.rows]
    ids = manifest.audio_ids
    by_clip = {}
    for row, clip in zip(manifest.rows, ids):
        by_clip.setdefault(clip, set()).add(row.caption)
    listed = {pair.row for pair in corrupted}
    for pair in corrupted:
        assert noisy.rows[pair.row].caption == pair.caption == manifest.rows[pair.caption_from_row].caption
        assert pair.original_caption == manifest.rows[pair.row].caption
        assert ids[pair.caption_from_row] != ids[pair.row]
    # a changed row left off the list got a caption of its own clip
    assert all(noisy.rows[i].caption in by_clip[ids[i]] for i in set(changed) - listed)
    again, corrupted_again = corrupt_captions(manifest, 0.25, seed=3)
    assert again.captions == noisy.captions and corrupted_again == corrupted
    assert corrupt_captions(manifest, 0.25, seed=4)[0].captions != noisy.captions


def test_noise_ratio_is_validated(tone_data):
    manifest = read_manifest(tone_data["train"])
    assert corrupt_captions(manifest, 0.0, 0) == (manifest, [])
    for ratio in (-0.1, 1.0):
        with pytest.raises(ValueError, match="noise ratio"):
            corrupt_captions(manifest, ratio, 0)
    with pytest.raises(ValueError, match="fewer than 2"):
        corrupt_captions(manifest, 0.01, 0)


def test_plan_mass_split_by_pair_kind():
    plan = torch.tensor([[0.2, 0.05, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.3]])
    out = plan_mass_by_pair_kind(plan, torch.tensor([False, True, False]))
    assert out["ot_row_mass_corrupted"].item() == pytest.approx(0.3)
    assert out["ot_pair_mass_corrupted"].item() == pytest.approx(0.3)
    assert out["ot_row_mass_clean"].item() == pytest.approx(3 * (0.25 + 0.3) / 2)
    assert out["ot_pair_mass_clean"].item() == pytest.approx(3 * (0.2 + 0.3) / 2)
    assert set(plan_mass_by_pair_kind(plan, torch.zeros(3, dtype=torch.bool))) == {"ot_row_mass_clean", "ot_pair_mass_clean"}


def test_noisy_training_lists_pairs_and_logs_plan_mass(tone_data, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--train", str(tone_data["train"]), "--objective", "mltm", "--noise-ratio", "0.25",
            "--out", str(run), "--epochs", "2", "--batch-size", "16", "-q", *TINY, "objective.options.partial_mass=0.75"]
    assert main(args) == 0
    with open(run / "noisy_pairs.csv") as fh:
        listed = list(csv.DictReader(fh))
    manifest = read_manifest(tone_data["train"])
    _, corrupted = corrupt_captions(manifest, 0.25, seed=0)
    assert [int(r["row"]) for r in listed] == [p.row for p in corrupted] and listed
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "step"]
    with_corrupted = [r for r in steps if "ot_row_mass_corrupted" in r]
    assert with_corrupted and all(0 <= r["ot_row_mass_corrupted"] <= 1 + 1e-4 for r in with_corrupted)
    assert all("ot_row_mass_clean" in r for r in steps)

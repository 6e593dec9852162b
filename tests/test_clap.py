"""A pretrained Hugging Face CLAP as clarion's model (``hf-clap``): step-0 parity with
``ClapModel.get_audio_features`` / ``get_text_features``, a deterministic front end, the
``hf-clap:PATH`` spec, and the way back (``clarion export --format hf``).

The references are transformers' own ``ClapModel``, ``ClapFeatureExtractor`` and
``zero-shot-audio-classification`` pipeline, on tiny random CLAP folders (tests/tiny_clap.py).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clarion.api import load
from clarion.config import ConfigError
from clarion.models import build_model, load_model_config, train_tokenizer
from clarion.rundir import RunError, build_run_objective, load_model, save_model

from tiny_clap import PROJECTION_DIM, SAMPLE_RATE, WINDOW_SECONDS, save_tiny_clap

transformers = pytest.importorskip("transformers")

WINDOW = SAMPLE_RATE * WINDOW_SECONDS
LOGIT_SCALE = math.log(1 / 0.05)
CAPTIONS = ["This is a sound of dog.", "rain on a roof", "a beep"]


@pytest.fixture(scope="module", params=[False, True], ids=["unfused", "fused"])
def clap_dir(request, tmp_path_factory) -> Path:
    fused = request.param
    return save_tiny_clap(tmp_path_factory.mktemp("clap-fused" if fused else "clap"), fused=fused, logit_scale=LOGIT_SCALE)


@pytest.fixture(scope="module")
def unfused_dir(tmp_path_factory) -> Path:
    return save_tiny_clap(tmp_path_factory.mktemp("clap-e2e"), fused=False, seed=1)


def clap_config(path: Path, *overrides: str):
    return load_model_config(
        None, ["model.audio_encoder=hf-clap", "model.text_encoder=hf-clap", f"model.clap_pretrained={path}", *overrides]
    )


def reference(path: Path):
    model = transformers.ClapModel.from_pretrained(path, local_files_only=True).eval()
    return model, transformers.ClapProcessor.from_pretrained(path, local_files_only=True)


def hf_audio(model, processor, waves: list[np.ndarray], is_longer: list[bool] | None = None) -> torch.Tensor:
    """get_audio_features on the HF extractor's features; ``is_longer`` replaces the extractor's
    flags (it flips a random clip of an all-short batch to "longer", which clarion never does)."""
    f = processor.feature_extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    longer = f["is_longer"] if is_longer is None else torch.tensor(is_longer)[:, None]
    with torch.no_grad():
        out = model.get_audio_features(input_features=f["input_features"], is_longer=longer)
    return getattr(out, "pooler_output", out)  # transformers 5: an output object; 4: the tensor


def hf_text(model, processor, texts: list[str]) -> torch.Tensor:
    enc = processor.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return getattr(out, "pooler_output", out)


def waves(n: int, length: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(length)).astype(np.float32) for _ in range(n)]


# ------------------------------------------------------------------------------------------
# step 0


def test_step0_embeddings_equal_clap_features(clap_dir):
    cfg = clap_config(clap_dir)
    assert (cfg.audio.sample_rate, cfg.audio.clip_seconds, cfg.model.embed_dim) == (SAMPLE_RATE, WINDOW_SECONDS, PROJECTION_DIM)
    assert cfg.objective.options["init_temperature"] == pytest.approx(math.exp(-LOGIT_SCALE), rel=1e-6)
    objective = build_run_objective(cfg)
    assert float(objective.temperature.logit_scale.detach()) == pytest.approx(LOGIT_SCALE, rel=1e-6)

    model = build_model(cfg, train_tokenizer(CAPTIONS, 50)).eval()
    ref, processor = reference(clap_dir)
    fused = ref.config.audio_config.enable_fusion
    with torch.no_grad():
        # clips of the window and shorter ones (the extractor pads them; nothing random)
        for length in (WINDOW, WINDOW // 3):
            batch = waves(3, length, seed=length)
            got = model.embed_audio(torch.from_numpy(np.stack(batch)))
            torch.testing.assert_close(got, hf_audio(ref, processor, batch, [False] * 3), atol=1e-5, rtol=0)
        # a clip longer than the window: unfused crops [0, W) in eval; fused takes the chunks HF's
        # extractor draws after np.random.seed(0) for that clip alone
        long = waves(1, 3 * WINDOW + 123, seed=7)
        got = model.embed_audio(torch.from_numpy(long[0])[None])
        if fused:
            np.random.seed(0)
            want = hf_audio(ref, processor, long)
        else:
            want = hf_audio(ref, processor, [long[0][:WINDOW]], [False])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.embed_text(CAPTIONS), hf_text(ref, processor, CAPTIONS), atol=1e-5, rtol=0)
    # CLAP's own heads, under the DualEncoder's usual names
    state = model.state_dict()
    for side in ("audio", "text"):
        for k, v in getattr(ref, f"{side}_projection").state_dict().items():
            assert torch.equal(state[f"{side}_projection.{k}"], v)


def test_short_clips_through_clarion_load_equal_clap_features(clap_dir):
    """A clip shorter than the window, given to clarion whole (clarion.load pads it to
    audio.clip_seconds before the extractor sees it): audio.pad follows the extractor's
    repeatpad, so the embedding is transformers' on the unpadded clip."""
    model = load(f"hf-clap:{clap_dir}", device="cpu")
    assert model.cfg.audio.pad == "repeat"
    ref, processor = reference(clap_dir)
    batch = waves(2, WINDOW // 3 + 17, seed=11)
    with torch.no_grad():
        want = torch.nn.functional.normalize(hf_audio(ref, processor, batch, [False] * 2), dim=-1)
    torch.testing.assert_close(model.embed_audio(batch), want, atol=1e-5, rtol=0)
    zero_padded = load(f"hf-clap:{clap_dir}", device="cpu")
    zero_padded.cfg.audio.pad = "zeros"  # what clarion did before audio.pad: a different embedding
    assert (zero_padded.embed_audio(batch) - want).abs().max() > 1e-3


def test_long_clip_embedding_is_deterministic(clap_dir):
    model = build_model(clap_config(clap_dir), train_tokenizer(CAPTIONS, 50)).eval()
    long = torch.from_numpy(waves(1, 4 * WINDOW + 55, seed=3)[0])[None]
    others = torch.from_numpy(np.stack(waves(2, 4 * WINDOW + 55, seed=4)))
    numpy_state = np.random.get_state()[1].copy()
    with torch.no_grad():
        model.embed_audio(torch.from_numpy(np.stack(waves(2, WINDOW // 2, seed=5))))  # short clips too
        first = model.embed_audio(long)
        again = model.embed_audio(long)
        in_batch = model.embed_audio(torch.cat([others[:1], long, others[1:]]))[1:2]
    assert torch.equal(first, again)
    torch.testing.assert_close(in_batch, first, atol=1e-6, rtol=0)  # batch-mates change nothing
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # HF's global numpy RNG untouched

    # training draws its crops / fusion chunks from torch's seeded generator: replayable
    model.train()
    features = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        features.append(model.audio_encoder.features(long)["input_features"])
    assert torch.equal(features[0], features[1])
    assert not torch.equal(features[0], features[2])


def test_embed_dim_contradicting_projection_dim_is_an_error(clap_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"model.embed_dim=32 contradicts .*projection_dim.* needs 8"):
        clap_config(clap_dir, "model.embed_dim=32")
    assert clap_config(clap_dir, "model.embed_dim=8").model.embed_dim == 8
    # the temperature the user set is kept
    assert clap_config(clap_dir, "init_temperature=0.2").objective.options["init_temperature"] == 0.2
    # a folder that is not a full ClapModel
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="not a full ClapModel"):
        clap_config(tmp_path)


def test_missing_or_wrong_clap_folder_is_one_line_error(tone_data, tmp_path, capsys):
    from clarion.cli import main

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for folder, message in ((tmp_path / "nothing", "cannot load CLAP model"), (bert, "not a full ClapModel")):
        args = ["train", "--train", str(tone_data["train"]), "--out", str(tmp_path / "run"), "model.audio_encoder=hf-clap",
                "model.text_encoder=hf-clap", f"model.clap_pretrained={folder}"]
        assert main(args) == 2
        assert message in capsys.readouterr().err


def test_run_directory_round_trip(clap_dir, tmp_path):
    cfg = clap_config(clap_dir)
    tokenizer = train_tokenizer(CAPTIONS, 50)
    model = build_model(cfg, tokenizer).eval()
    run = tmp_path / "run"
    run.mkdir()
    cfg.save(run / "config.yaml")
    tokenizer.save(str(run / "tokenizer.json"))
    save_model(run, model, build_run_objective(cfg), {"epoch": 0})
    moved = tmp_path / "gone"
    Path(clap_dir).rename(moved)  # the run needs nothing of the original folder
    try:
        _, loaded = load_model(run)
    finally:
        moved.rename(clap_dir)
    batch = torch.from_numpy(np.stack(waves(2, WINDOW, seed=1)))
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed_audio(batch), model.embed_audio(batch), atol=0, rtol=0)
        torch.testing.assert_close(loaded.embed_text(CAPTIONS), model.embed_text(CAPTIONS), atol=0, rtol=0)


RECIPES = sorted((Path(__file__).parents[1] / "configs").glob("finetune_clap_*.yaml"))
VARIANTS = {  # the objective variants the recipes' comments give
    "infonce": [],
    "infonce+svr": ["objective.name=infonce+svr", "radius=dynamic", "sides=bi"],
    "mltm": ["objective.name=mltm", "metric=projected", "eps=0.05"],
}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_finetune_recipes_build_from_a_clap_folder(recipe, unfused_dir):
    assert len(RECIPES) == 2
    for name, overrides in VARIANTS.items():
        cfg = load_model_config(recipe, [f"model.clap_pretrained={unfused_dir}", *overrides])
        assert (cfg.objective.name, cfg.model.embed_dim, cfg.audio.clip_seconds) == (name, PROJECTION_DIM, WINDOW_SECONDS)
        objective = build_run_objective(cfg)
        if name == "mltm":  # no temperature to set
            assert "init_temperature" not in cfg.objective.options
        else:
            temperature = objective.temperature if name == "infonce" else objective.base.temperature
            expected = transformers.ClapModel.from_pretrained(unfused_dir).logit_scale_a.item()
            assert temperature.logit_scale.item() == pytest.approx(expected, rel=1e-6)
    model = build_model(cfg, train_tokenizer(CAPTIONS, 50))
    assert type(model.audio_projection).__name__ == "ClapProjectionLayer"


def test_training_crops_are_seeded_so_resume_is_exact(tone_data, tmp_path):
    """Clips twice the window: in training the fused tower draws its chunks from torch's
    checkpointed generator, so rolling back to the epoch-1 checkpoint and resuming gives the
    same weights as the uninterrupted run, while another seed gives other weights."""
    import shutil

    from clarion.files import sha256
    from clarion.train.loop import train

    clap = save_tiny_clap(tmp_path / "clap", fused=True)

    def cfg(seed: int):
        return clap_config(
            clap, f"data.train={tone_data['train']}", "train.epochs=2", "train.batch_size=16", "audio.clip_seconds=2.0",
            "train.warmup_steps=0", "train.lr=0.003", "data.num_workers=0", f"train.seed={seed}", "train.device=cpu",
            "train.drift_every=0", "train.collapse_every=0",
        )

    train(cfg(0), tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "rolled")
    checkpoints = tmp_path / "rolled" / "checkpoints"
    steps = sorted(p.name for p in checkpoints.glob("step_*"))
    assert len(steps) == 2
    shutil.rmtree(checkpoints / steps[-1])
    (checkpoints / "latest").write_text(steps[0] + "\n")
    train(cfg(0), tmp_path / "rolled", resume=True)
    assert sha256(tmp_path / "rolled" / "model.safetensors") == sha256(tmp_path / "full" / "model.safetensors")
    train(cfg(1), tmp_path / "other")
    assert sha256(tmp_path / "other" / "model.safetensors") != sha256(tmp_path / "full" / "model.safetensors")


# ------------------------------------------------------------------------------------------
# hf-clap:PATH and the export to Hugging Face


def test_hf_clap_spec_through_load_and_embed_cli(clap_dir, tmp_path):
    import clarion
    from clarion.cli import main

    model = clarion.load(f"hf-clap:{clap_dir}", device="cpu")
    ref, processor = reference(clap_dir)
    clips = waves(3, WINDOW, seed=11)
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    for i, w in enumerate(clips):
        sf.write(audio_dir / f"{i}.wav", w, SAMPLE_RATE, subtype="FLOAT")
    want = hf_audio(ref, processor, clips, [False] * 3)
    torch.testing.assert_close(model.embed_audio([audio_dir / f"{i}.wav" for i in range(3)]), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.embed_text(CAPTIONS), hf_text(ref, processor, CAPTIONS), atol=1e-5, rtol=0)

    out = tmp_path / "emb.npy"
    assert main(["embed", str(audio_dir), "--model", f"hf-clap:{clap_dir}", "--out", str(out), "--device", "cpu", "-q"]) == 0
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    order = [int(Path(r["path"]).stem) for r in rows]
    torch.testing.assert_close(torch.from_numpy(np.load(out)), want[order], atol=1e-5, rtol=0)
    # an export of the spec is an ordinary clarion export
    exported = model.save(tmp_path / "export")
    torch.testing.assert_close(clarion.load(exported, device="cpu").embed_text(CAPTIONS), model.embed_text(CAPTIONS))
    assert main(["embed", str(audio_dir), "--model", f"hf-clap:{tmp_path / 'nothing'}", "--out", str(out), "-q"]) == 2


def test_hf_export_round_trip(clap_dir, tmp_path):
    import clarion
    from clarion.export import export_hf

    model = clarion.load(f"hf-clap:{clap_dir}", device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():  # stand in for fine-tuning: every weight moves
        for p in model.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.objective_state["temperature.logit_scale"] = torch.tensor(2.5)
    out = export_hf(model, tmp_path / "hf")
    ref, processor = reference(out)
    assert ref.logit_scale_a.item() == pytest.approx(2.5) and ref.logit_scale_t.item() == pytest.approx(2.5)
    clips = waves(2, WINDOW, seed=2)
    torch.testing.assert_close(
        model.embed_audio(list(clips)), hf_audio(ref, processor, clips, [False] * 2), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(model.embed_text(CAPTIONS), hf_text(ref, processor, CAPTIONS), atol=1e-5, rtol=0)
    with pytest.raises(RunError, match="not empty"):
        export_hf(model, out)


def test_hf_export_of_a_non_clap_run_is_a_clear_error(tmp_path, capsys):
    from clarion.cli import main

    from conftest import TINY

    cfg = load_model_config(None, TINY)
    tokenizer = train_tokenizer(CAPTIONS, 50)
    run = tmp_path / "run"
    run.mkdir()
    cfg.save(run / "config.yaml")
    tokenizer.save(str(run / "tokenizer.json"))
    save_model(run, build_model(cfg, tokenizer), build_run_objective(cfg), {"epoch": 0})
    assert main(["export", str(run), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 2
    err = capsys.readouterr().err
    assert "both towers must be CLAP's" in err and "audio_encoder=cnn" in err and "--format clarion" in err
    assert not (tmp_path / "hf").exists()
    assert main(["export", str(run), "--out", str(tmp_path / "clarion")]) == 0  # the default format is unchanged
    assert (tmp_path / "clarion" / "config.yaml").is_file()


# ------------------------------------------------------------------------------------------
# the whole path, as a user runs it


def pipeline_results(model_dir: Path, files: list[Path], labels: list[str]) -> tuple[list[str], torch.Tensor]:
    """transformers' zero-shot pipeline on each file: top-1 labels and probabilities [N, C] (labels' order)."""
    classify = transformers.pipeline("zero-shot-audio-classification", model=str(model_dir), device="cpu")
    top1, probs = [], []
    for path in files:
        wave, rate = sf.read(path, dtype="float32")
        assert rate == SAMPLE_RATE and len(wave) == WINDOW  # the extractor then crops nothing at random
        result = classify(wave, candidate_labels=labels)
        top1.append(result[0]["label"])
        by_label = {r["label"]: r["score"] for r in result}
        probs.append([by_label[label] for label in labels])
    return top1, torch.tensor(probs, dtype=torch.float64)


def check_same_classification(model, files: list[Path], labels: list[str], logit_scale: float, hf) -> None:
    """clarion's top-1 and its probabilities at the model's logit scale equal the pipeline's."""
    top1, probs = hf
    result = model.classify(files, labels, scale=math.exp(logit_scale))
    assert result.predicted == top1
    torch.testing.assert_close(result.probs.double(), probs, atol=1e-5, rtol=0)
    assert (probs.max(0).values - probs.min(0).values).max() > 1e-4  # the clips' scores differ: a real comparison


def confusion_of(predicted: list[str], truth: list[str], labels: list[str]) -> list[list[int]]:
    matrix = [[0] * len(labels) for _ in labels]
    for p, t in zip(predicted, truth):
        matrix[labels.index(t)][labels.index(p)] += 1
    return matrix


def test_pretrained_clap_end_to_end(unfused_dir, tmp_path):
    """tiny CLAP folder → `clarion zeroshot hf-clap:DIR` = transformers' pipeline → one epoch of
    infonce+svr → `clarion export --format hf` → the pipeline on the export = `clarion zeroshot RUN`."""
    import clarion
    from clarion.cli import main
    from clarion.synth.generate import generate

    data = tmp_path / "synth"
    generate(data, n_train=24, n_val=0, n_test=12, seed=0, clip_seconds=WINDOW_SECONDS, workers=1)
    rows = list(csv.DictReader(open(data / "test.csv")))
    clips = {}
    for row in rows:
        clips.setdefault(row["audio"], row["label"])
    files = [data / a if not Path(a).is_absolute() else Path(a) for a in clips]
    truth = list(clips.values())
    labels = sorted(set(truth))

    def clarion_zeroshot(model: str, name: str) -> dict:
        out = tmp_path / f"{name}.json"
        assert main(["zeroshot", model, "--data", str(data / "test.csv"), "--json", str(out), "--device", "cpu", "-q"]) == 0
        return json.loads(out.read_text())

    # step 0: the pretrained folder itself
    step0 = clarion_zeroshot(f"hf-clap:{unfused_dir}", "step0")
    assert step0["labels"] == labels
    hf0 = pipeline_results(unfused_dir, files, labels)
    assert step0["confusion"] == confusion_of(hf0[0], truth, labels)
    pretrained = clarion.load(f"hf-clap:{unfused_dir}", device="cpu")
    logit_scale0 = transformers.ClapModel.from_pretrained(unfused_dir).logit_scale_a.item()
    check_same_classification(pretrained, files, labels, logit_scale0, hf0)

    # one epoch of infonce+svr
    run = tmp_path / "run"
    assert main([
        "train", "--train", str(data / "train.csv"), "--objective", "infonce+svr", "--epochs", "1", "--batch-size", "8",
        "--out", str(run), "--device", "cpu", "-q", "model.audio_encoder=hf-clap", "model.text_encoder=hf-clap",
        f"model.clap_pretrained={unfused_dir}", "train.lr=0.003", "train.warmup_steps=0", "data.num_workers=0",
        "train.drift_every=0", "train.collapse_every=0",
    ]) == 0
    trained = clarion.load(run, device="cpu")
    assert not torch.allclose(trained.embed_text(labels), pretrained.embed_text(labels), atol=1e-4)  # it did train
    assert float(trained.objective_state["base.temperature.logit_scale"]) != pytest.approx(
        float(build_run_objective(clap_config(unfused_dir, "objective.name=infonce+svr")).base.temperature.logit_scale.detach())
    )

    # export to Hugging Face; transformers' pipeline agrees with clarion on every clip
    export = tmp_path / "hf"
    assert main(["export", str(run), "--out", str(export), "--format", "hf", "-q"]) == 0
    tuned = clarion_zeroshot(str(run), "tuned")
    hf1 = pipeline_results(export, files, labels)
    assert tuned["confusion"] == confusion_of(hf1[0], truth, labels)
    check_same_classification(trained, files, labels, float(trained.objective_state["base.temperature.logit_scale"]), hf1)

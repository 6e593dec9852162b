import pytest

from clarion.cli import build_parser, main


def test_every_subcommand_has_help(capsys):
    for command in ("synth", "train", "evaluate", "objectives"):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: clarion " + command in capsys.readouterr().out


def test_objectives_lists_the_registry(capsys):
    assert main(["objectives"]) == 0
    assert {"infonce", "siglip"} <= set(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--train", "{tmp}/missing.csv", "--out", "{tmp}/run"], "missing.csv"),
        (["train", "--train", "{tmp}/x.csv", "--out", "{tmp}/run", "train.nope=1"], "unknown config key(s) train.nope"),
        (["train", "--out", "{tmp}/run"], "no training manifest"),
        (["train", "--train", "{tmp}/x.csv", "--objective", "nope", "--out", "{tmp}/run"], "unknown objective"),
        (["evaluate", "{tmp}/not_a_run", "--data", "{tmp}/x.csv"], "not a clarion run"),
    ],
)
def test_user_errors_exit_2_with_one_clear_line(tmp_path, capsys, args, message, tone_data):
    (tmp_path / "x.csv").write_text(tone_data["val"].read_text().replace("audio/", f"{tone_data['val'].parent}/audio/"))
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("clarion ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_synth_command_writes_the_documented_layout(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth", str(out), "--clips", "8", "--val-clips", "4", "--test-clips", "4", "--seed", "3", "-q"]) == 0
    assert "8 train / 4 val / 4 test clips" in capsys.readouterr().out
    for name in ("train.csv", "val.csv", "test.csv", "train_multilingual.csv", "test_en.csv", "test_de.csv"):
        assert (out / name).is_file(), name
    assert len((out / "train.csv").read_text().splitlines()) == 1 + 8 * 5


def test_overrides_may_follow_options_but_unknown_flags_still_fail(capsys):
    from clarion.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--out", "x", "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["objectives", "a=b"])  # a command without overrides takes none

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

"""Config files and list flags as a user meets them on the command line: hostile YAML is refused
fast, parse errors name the line and column, the extension picks the parser, quoted numbers are
explained, and a repeated list flag extends instead of dropping what came first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trimodal.cli import main, parse

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


def test_a_yaml_alias_bomb_is_refused_in_one_line_with_bounded_memory(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    # a hard 1.5 GB address-space cap: expanding the bomb would need far more and die, not refuse
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000)); "
            "from trimodal.cli import main; sys.exit(main(sys.argv[1:]))")
    for argv in (["train", "--config", str(path)],
                 ["pipeline", "text", "--config", str(path), "--input", "x.jsonl", "--text-tokenizer", "t", "--out", "o"]):
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "alias *a is not accepted" in lines[0] and "line 2" in lines[0], lines


def test_parse_errors_name_the_line_and_column_and_the_extension_picks_the_parser(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  steps: 10\n   bad: [\n")
    assert "bad.yaml: not valid YAML: line 3, column 7" in _error(capsys, ["train", "--config", str(bad)])
    js = tmp_path / "bad.json"
    js.write_text('{"run": {"steps": 10,}}')
    assert "bad.json: not valid JSON: line 1, column 22" in _error(capsys, ["train", "--config", str(js)])
    cfg = tmp_path / "conf.cfg"
    cfg.write_text("run:\n  steps: 3\n")
    msg = _error(capsys, ["train", "--config", str(cfg)])
    assert "unknown config format '.cfg'" in msg and ".json, .yaml/.yml or .toml" in msg


def test_a_quoted_number_is_explained(tmp_path, capsys):
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"run": {"steps": "100"}}))
    msg = _error(capsys, ["train", "--config", str(path)])
    assert "run.steps: expected an integer, got '100'" in msg and "quotes make it a string" in msg


def test_repeated_list_flags_extend_and_a_repeated_config_is_refused(tmp_path, capsys):
    _, cfg, _ = parse(["pipeline", "text", "--input", "a.jsonl", "--input", "b.jsonl", "c.jsonl",
                       "--text-tokenizer", "t.model", "--out", "o"])
    assert cfg.inputs == ["a.jsonl", "b.jsonl", "c.jsonl"]
    _, cfg, _ = parse(["pipeline", "mix", "--inputs", "r1", "--inputs", "r2", "--out", "o", "--seq-len", "64", "--weights", "1", "--weights", "2"])
    assert list(cfg.inputs) == ["r1", "r2"] and list(cfg.weights) == [1.0, 2.0]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("{}")
    b.write_text("{}")
    with pytest.raises(SystemExit):
        parse(["train", "--config", str(a), "--config", str(b)])
    assert "--config given twice" in capsys.readouterr().err
    msg = _error(capsys, ["shards", "stats", str(tmp_path), "--seq-len", "64", str(tmp_path)])
    assert "unexpected argument" in msg

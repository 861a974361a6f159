"""The tts-runtime dispatcher: fast help without torch, lazy subcommands, clear errors, JSON logs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from tts_runtime import cli
from tts_runtime.logs import JsonFormatter


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_help_lists_every_subcommand_without_importing_torch() -> None:
    result = run_python(
        "import sys\n"
        "from tts_runtime.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("NO-TORCH")
    for name in ("train", "serve", "preflight", "export", "verify", "demo-model", "fetch", "publish"):
        assert name in result.stdout


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 0
    assert "usage: tts-runtime" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["frobnicate"])
    assert e.value.code == 2


def test_missing_module_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    missing = cli.Subcommand("later", "tts_runtime.not_written_yet", "h", "d")
    monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, missing))
    assert cli.main(["later"]) == 1
    assert "not available in this build (module tts_runtime.not_written_yet" in capsys.readouterr().err


def test_broken_module_is_not_reported_as_missing(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # a module that exists but imports something absent is a real bug: it must surface, not hide
    (tmp_path / "tts_cli_broken_mod.py").write_text("import a_module_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = cli.Subcommand("broken", "tts_cli_broken_mod", "h", "d")
    monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, broken))
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist"):
        cli.main(["broken"])


def test_verify_subcommand_flags_and_global_flags_after_it(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    # verify imports no torch, so it runs here: a directory without manifest is bad input (65)
    code = cli.main(["verify", str(tmp_path), "--json", "--log-format", "json"])
    assert code == 65
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and "no manifest.json" in out["problems"][0]


def test_json_log_lines_carry_extra_fields() -> None:
    record = logging.LogRecord("tts_runtime.x", logging.INFO, __file__, 1, "epoch %d done", (3,), None)
    record.epoch = 3
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "epoch 3 done" and entry["level"] == "info" and entry["epoch"] == 3

"""Command-line behaviour: help text, and fix-it errors before any job starts."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import beam_runner
from tokenmill.pipelines.ingest import dead_letter

ROOT = Path(__file__).resolve().parents[1]


def test_help_explains_every_command():
    out = subprocess.run([sys.executable, str(ROOT / "beam_runner.py"), "tokenize", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for text in ("--codebook", "--captions", "--num_shards", "dead letters", "Beam options",
                 "--direct_running_mode", "--mulan_model", "--mulan_codebook", "fit-codebook --stream mulan"):
        assert text in out
    out = subprocess.run([sys.executable, str(ROOT / "beam_runner.py"), "embed-text", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for text in ("TEXT", "--json", "--mulan_path", "load_text_tokenizer"):
        assert text in out


def test_typo_in_an_option_is_refused_with_a_suggestion(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"--num_shard \(did you mean --num_shards\?\)"):
        beam_runner.main(["tokenize", "--input", str(tmp_path / "*.wav"), "--codebook", "x",
                          "--output", str(tmp_path / "o"), "--num_shard", "3"])


def test_several_patterns_after_one_input_flag_equal_the_flag_repeated():
    """`--input 'a/*' 'b/*'` (as the README writes GLOB...) means the same as --input repeated."""
    from tokenmill.pipelines.options import add_fit_codebook_args

    p = argparse.ArgumentParser()
    add_fit_codebook_args(p)
    one = p.parse_args(["--input", "a/*", "b/*.flac", "--output", "o"])
    rep = p.parse_args(["--input", "a/*", "--input", "b/*.flac", "--output", "o"])
    assert one.inputs == rep.inputs == ["a/*", "b/*.flac"]


def test_stray_positional_argument_is_explained(tmp_path):
    with pytest.raises(SystemExit, match="unexpected argument"):
        beam_runner.main(["tokenize", "--codebook", "x", "--output", "o", "stray.wav", "--input", "a.wav"])


def test_pattern_matching_nothing_fails_fast(tmp_path):
    with pytest.raises(SystemExit, match="matched no files"):
        beam_runner.main(["fit-codebook", "--input", str(tmp_path / "*.flac"), "--output", str(tmp_path)])


def test_missing_codebook_names_the_fix(tmp_path, real_audio_dir):
    """A missing codebook stops the launch with the fix-it message (SystemExit, no traceback)."""
    with pytest.raises(SystemExit, match="semantic-\\*.safetensors"):
        beam_runner.main(["tokenize", "--input", str(real_audio_dir / "*.wav"), "--codebook",
                          str(tmp_path), "--output", str(tmp_path / "o")])


def test_dead_letter_messages_drop_memory_addresses():
    """Regression: '<_io.BytesIO object at 0x7f..>' in a decoder message broke re-run identity."""
    d = dead_letter("a.wav", "decode", ValueError("Error opening <_io.BytesIO object at 0x7faa932ec310>: bad"))
    assert d.message == "Error opening <_io.BytesIO>: bad" and d.reason == "unexpected-error"


def test_atomic_write_tolerates_a_parent_created_concurrently(tmp_path, monkeypatch):
    """Regression: two multi_processing workers raced on mkdirs('parquet/') and one failed."""
    from apache_beam.io.filesystems import FileSystems

    from tokenmill.pipelines import sinks

    (tmp_path / "parquet").mkdir()
    real_exists = FileSystems.exists
    calls = []

    def stale_exists(path):  # the first check says "missing", as if another worker was faster
        calls.append(path)
        return False if len(calls) == 1 else real_exists(path)

    monkeypatch.setattr(FileSystems, "exists", staticmethod(stale_exists))
    sinks.atomic_write(str(tmp_path / "parquet" / "a.bin"), b"data")
    assert (tmp_path / "parquet" / "a.bin").read_bytes() == b"data"
    assert not list((tmp_path / "parquet").glob("*.tmp-*"))


def test_jobs_print_progress_lines_and_not_the_optional_client_warning(tmp_path, real_audio_dir):
    """Regression: Beam's import-time `logging.warning` ("apitools not found") installed a
    WARNING-level root handler before the CLI configured logging, so basicConfig did nothing and
    every INFO progress line ([decode] ..., metrics) was silent in real runs."""
    import shutil

    shutil.copy(real_audio_dir / "asc_frontiers.mp3", tmp_path / "a.mp3")
    res = subprocess.run([sys.executable, str(ROOT / "beam_runner.py"), "fit-codebook", "--input",
                          str(tmp_path / "*.mp3"), "--output", str(tmp_path / "cb"), "--num_clusters", "8"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "INFO [decode] 1 files" in res.stderr
    assert "apitools" not in res.stderr + res.stdout


def test_one_error_path_exit_2_with_the_message(tmp_path, capsys):
    """Regression: a corrupt dataset made `stats` print a traceback. Every TokenmillError now ends
    the command with its message on stderr and exit status 2."""
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(SystemExit) as e:
        beam_runner.main(["stats", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "manifest.json" in err and "Traceback" not in err


def test_library_code_raises_no_system_exit():
    """Only the command line (tokenmill/cli/) ends the process; library code raises TokenmillError."""
    import re

    bad = []
    for path in sorted((ROOT / "tokenmill").rglob("*.py")):
        if path.relative_to(ROOT).parts[:2] == ("tokenmill", "cli"):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"SystemExit|sys\.exit|os\._exit", line):
                bad.append(f"{path.relative_to(ROOT)}:{i}")
    assert not bad, bad


def test_every_command_is_one_table_row_and_one_module():
    import importlib

    from tokenmill.cli import COMMANDS, build_parser

    for name, (module, help_line, takes_beam_args) in COMMANDS.items():
        mod = importlib.import_module(module)
        assert callable(mod.add_args) and callable(mod.run) and help_line and isinstance(takes_beam_args, bool)
    parser = build_parser()  # every module's flags, together: no clash
    args, rest = parser.parse_known_args(["train", "--stage", "fine", "--data", "d", "--output", "o"])
    assert (args.command, args.stage, args.out, rest) == ("train", "fine", "o", [])


def test_extra_arguments_are_refused_by_commands_without_beam_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        beam_runner.main(["verify", str(tmp_path), "--runner=DataflowRunner"])
    assert e.value.code == 2 and "--runner=DataflowRunner" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="Beam options apply to --captions only"):
        beam_runner.main(["generate", "--text", "x", "--output", "x.wav", "--direct_num_workers=2"])


def test_python_m_tokenmill_cli_is_the_same_cli():
    res = subprocess.run([sys.executable, "-m", "tokenmill.cli", "train-codec", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--export" in res.stdout and "--heldout_percent" in res.stdout


def test_installed_console_script_is_the_same_cli():
    script = Path(sys.executable).parent / "tokenmill"
    res = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "fit-codebook" in res.stdout and "memorization" in res.stdout

"""Bad and edge-case inputs to ``lab7 run``: each ends in one sentence and an exit status (2 for bad input or a
failed stage, 130 for Ctrl-C, 143 for SIGTERM), never in a traceback, and keeps what finished."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lab7_helpers.app.cli import main

FAST = ["--model", "tiny-gpt2", "--kl-steps", "2", "--max-new-tokens", "4", "--device", "cpu"]
LONG_PROMPT = " ".join(["word"] * 600)  # about 600 tokens: more than tiny-gpt2's context of 512
FLOAT_FLAGS = ["--test-fraction", "--kl-beta", "--kl-lr", "--dpo-beta", "--dpo-lr", "--temperature", "--top-p",
               "--kl-beta-sweep"]
EVALUATED = {"settings.json", "report.html", "data_card.csv", "metrics.csv", "metrics.png", "generations.jsonl"}
KL_DONE = {"history_kl.csv", "kl_history.png"}
DPO_DONE = {"history_dpo.csv", "dpo_history.png"}


def write_pairs(path: Path, prompts: list[str]) -> Path:
    rows = [{"prompt": prompt, "chosen": f"A kind, helpful answer number {i}.", "rejected": "No."}
            for i, prompt in enumerate(prompts)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def short_pairs(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "short.jsonl", [f"Question {i}?" for i in range(4)])


def run(args: list[str], capsys) -> tuple[int, str]:
    """``lab7 run ARGS`` in this process: (exit status, stderr)."""
    try:
        code = main(["run", *args])
    except SystemExit as stop:  # argparse's errors
        code = stop.code
    return code, capsys.readouterr().err


def assert_one_sentence(stderr: str, *parts: str) -> None:
    """No traceback; one error line, the last one, containing each of ``parts``."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    for part in parts:
        assert part in errors[0], (part, errors[0])


def strict_json(path: Path):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
@pytest.mark.parametrize("flag", FLOAT_FLAGS)
def test_nan_and_infinity_are_refused_when_the_flags_are_parsed(flag, value, tmp_path, capsys):
    out = tmp_path / "out"
    code, stderr = run([*FAST, f"{flag}={value}", "--out", str(out)], capsys)  # "=": -inf is no flag
    assert code == 2
    assert_one_sentence(stderr, f"argument {flag}: must be a ", f"got {value}")
    assert not out.exists()


# name, pairs ("short" or "long": every prompt 600 words), flags, exit status, parts of the error line (or of the
# report for a run that succeeds), outputs afterwards, models in metrics.csv
RUNS = [  # a divergent --kl-lr: test_rerun_into_a_failed_runs_folder...
    ("divergent --dpo-lr", "short", ["--dpo-lr", "1e6"], 2,
     ["DPO failed: the loss became", "--dpo-lr 1e+06"], EVALUATED | KL_DONE, ["base", "kl"]),
    ("600-word prompts in training and held out, --max-length 100000", "long", ["--max-length", "100000"], 0,
     ["--max-length 100000 is more than tiny-gpt2 reads at once: using its context of 512 tokens",
      "the model reads at most 512 tokens, so 1 prompt(s) lost their start",
      "4 (scaled with the data)"],  # 1 training pair: 4 passes, the most (tests/test_cli.py runs one pass)
     EVALUATED | KL_DONE | DPO_DONE, ["base", "kl", "dpo"]),
]


@pytest.mark.parametrize("name, pairs, flags, code, parts, outputs, models", RUNS, ids=[r[0] for r in RUNS])
def test_runs_end_in_one_sentence_and_keep_what_finished(name, pairs, flags, code, parts, outputs, models,
                                                          short_pairs, tmp_path, capsys):
    pairs_file = short_pairs if pairs == "short" else write_pairs(tmp_path / "long.jsonl",
                                                                 [f"{LONG_PROMPT} {i}?" for i in range(2)])
    out = tmp_path / "out"
    status, stderr = run([*FAST, "--pairs", str(pairs_file), "--out", str(out), *flags], capsys)
    assert status == code, stderr
    report = (out / "report.html").read_text()
    if code:
        assert_one_sentence(stderr, *parts)
        assert "failed: " in report and "Details for a bug report" in report
    else:
        assert "Traceback" not in stderr and "error:" not in stderr
        assert all(part in report for part in parts), report
    assert {p.name for p in out.iterdir()} == outputs
    assert list(pd.read_csv(out / "metrics.csv", index_col="model").index) == models
    settings = strict_json(out / "settings.json")
    assert settings["model"] == "tiny-gpt2" and settings["dpo_epochs"] is None  # as asked: scaled with the data


def test_skip_bad_lines_trains_on_the_good_lines_and_says_what_it_left_out(short_pairs, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(short_pairs.read_text() + '{"prompt": "Question 9?", "chosen": "Yes."}\n')
    out = tmp_path / "out"
    code, stderr = run([*FAST, "--pairs", str(pairs), "--out", str(out)], capsys)
    assert code == 2 and f"{pairs}:5: missing field" in stderr and "add --skip-bad-lines" in stderr
    assert not out.exists()
    code, stderr = run([*FAST, "--pairs", str(pairs), "--out", str(out), "--skip-bad-lines"], capsys)
    assert code == 0, stderr
    assert f'skipped 1 bad line(s); first: {pairs}:5: missing field "rejected"' in stderr
    assert "4 pairs from" in stderr  # the good lines, all of them
    assert pd.read_csv(out / "data_card.csv", index_col=0).loc["bad lines left out", "data card"] == "1"


def a_file(tmp: Path) -> Path:
    (tmp / "results.txt").write_text("mine")
    return tmp / "results.txt"


@pytest.mark.parametrize("flag, make_bad_path, message", [
    ("--out", a_file, "--out {path} is a file; give the name of a folder"),
    ("--pairs", lambda tmp: tmp, "--pairs {path} is a folder; give the pairs file in it"),
    ("--pairs", lambda tmp: tmp / "missing.jsonl", "pairs file not found: {path}"),
])
def test_paths_that_cannot_be_used_are_named(flag, make_bad_path, message, short_pairs, tmp_path, capsys):
    bad = make_bad_path(tmp_path)
    paths = {"--pairs": str(short_pairs), "--out": str(tmp_path / "out"), flag: str(bad)}
    code, stderr = run([*FAST, *[part for item in paths.items() for part in item]], capsys)
    assert code == 2
    assert_one_sentence(stderr, message.format(path=bad))
    assert not (tmp_path / "out").exists()
    assert flag != "--out" or bad.read_text() == "mine"


def test_rerun_into_a_failed_runs_folder_needs_overwrite(short_pairs, tmp_path, capsys):
    out = tmp_path / "out"
    code, stderr = run([*FAST, "--pairs", str(short_pairs), "--out", str(out), "--kl-lr", "1e6"], capsys)
    assert code == 2
    assert_one_sentence(stderr, "KL update failed: the loss became", "--kl-lr 1e+06", f"{out}/report.html")
    assert {p.name for p in out.iterdir()} == EVALUATED  # the evaluation ran on the base model alone
    assert list(pd.read_csv(out / "metrics.csv", index_col="model").index) == ["base"]
    assert "KL update: failed" in (out / "report.html").read_text()
    (out / "notes.txt").write_text("the student's own file")
    failed_report = (out / "report.html").read_text()

    code, stderr = run([*FAST, "--pairs", str(short_pairs), "--out", str(out)], capsys)
    assert code == 2
    assert_one_sentence(stderr, "already exists and is not empty", "--overwrite")
    assert (out / "report.html").read_text() == failed_report

    code, stderr = run([*FAST, "--pairs", str(short_pairs), "--out", str(out), "--overwrite"], capsys)
    assert code == 0 and "Traceback" not in stderr
    assert {p.name for p in out.iterdir()} == EVALUATED | KL_DONE | DPO_DONE | {"notes.txt"}
    assert 'class="failed"' not in (out / "report.html").read_text()


def test_weight_folders_are_removed_when_a_stage_is_interrupted(short_pairs, tmp_path, capsys, monkeypatch):
    import lab7_helpers.app.run as run_module

    seen = []

    def interrupted(*args, **kwargs):
        seen.extend(tmp_path.glob("lab7_weights_*"))  # the KL model waits on disk meanwhile
        raise KeyboardInterrupt

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(run_module, "train_dpo", interrupted)
    code, stderr = run([*FAST, "--pairs", str(short_pairs), "--out", str(tmp_path / "out")], capsys)
    assert code == 130 and "Traceback" not in stderr
    assert seen and not list(tmp_path.glob("lab7_weights_*"))


def ctrl_c_as_at_a_terminal() -> None:
    """In the child, before Python starts: SIGINT to its default. A shell's background job (``pytest ... &``)
    ignores SIGINT, Python then never raises KeyboardInterrupt, and a Ctrl-C test would run a whole job instead."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


SIGNAL_DURING = {
    # Ctrl-C as the libraries begin to load, before any stage: nothing written yet
    "SIGINT at start-up": ("cli.quiet_libraries = lambda: os.kill(os.getpid(), signal.SIGINT)", 130,
                           "lab7: interrupted"),
    # SIGTERM while DPO trains: the KL model's weight folder must go too
    "SIGTERM during DPO": ("import lab7_helpers.app.run as run\n"
                           "run.train_dpo = lambda *a, **k: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(30))",
                           143, "lab7: stopped (SIGTERM); finished stages are in"),
}


@pytest.mark.parametrize("when", SIGNAL_DURING)
def test_signals_end_with_one_line(when, short_pairs, tmp_path):
    patch, code, message = SIGNAL_DURING[when]
    out = tmp_path / "out"
    script = (f"import os, signal, sys, time\nimport lab7_helpers.app.cli as cli\n{patch}\n"
              f"sys.exit(cli.main({['run', *FAST, '--pairs', str(short_pairs), '--out', str(out)]!r}))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TMPDIR": str(tmp_path)}, preexec_fn=ctrl_c_as_at_a_terminal)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith(message)
    assert not list(tmp_path.glob("lab7_weights_*"))
    assert not out.exists() if code == 130 else (out / "history_kl.csv").exists()


def test_ctrl_c_while_torch_loads_ends_in_one_line():
    """Ctrl-C during the seconds ``import torch`` takes, before any of the lab's code runs."""
    script = ("import importlib.abc, os, signal, sys\n"
              "class CtrlC(importlib.abc.MetaPathFinder):\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'torch':\n"
              "            os.kill(os.getpid(), signal.SIGINT)\n"
              "sys.meta_path.insert(0, CtrlC())\n"
              "sys.argv = ['lab7', 'run', '--model', 'tiny-gpt2']\n"
              "import runpy\n"
              "runpy.run_module('lab7_helpers.app.cli', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            preexec_fn=ctrl_c_as_at_a_terminal)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "lab7: interrupted while starting"


@pytest.mark.parametrize("rows, note", [
    ([("Q1?", "Yes, gladly.", "No."), ("Q1?", "Yes, gladly.", "No."), ("Q2?", "Sure.", "Go away.")],
     "1 pair(s) repeat another pair exactly"),
    ([("Same?", f"Answer {i}.", "No.") for i in range(4)], "Every pair has the same prompt"),
], ids=["duplicated pairs", "one prompt for every pair"])
def test_notes_before_training_warn_about_copies_and_a_single_prompt(rows, note, tmp_path, capsys, monkeypatch):
    """The notes come before the model loads; the run is stopped there (the model cannot load in this test)."""
    def no_model(*args, **kwargs):
        raise OSError("no model in this test")

    monkeypatch.setattr("lab7_helpers.app.run.load_model", no_model)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(dict(zip(("prompt", "chosen", "rejected"), row))) + "\n" for row in rows))
    code, stderr = run([*FAST, "--pairs", str(pairs), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and note in stderr
    assert_one_sentence(stderr, "no model in this test")

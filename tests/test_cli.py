import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lab7_helpers.app.cli import main
from lab7_helpers import BUNDLED_PAIRS

OUTPUTS = ["report.html", "settings.json", "data_card.csv", "history_kl.csv", "history_dpo.csv", "history_dpo_trl.csv",
           "beta_sweep.csv", "metrics.csv", "generations.jsonl", "kl_history.png", "dpo_history.png",
           "dpo_trl_history.png", "dpo_vs_trl.png", "beta_sweep.png", "metrics.png"]
FAST = ["--model", "tiny-gpt2", "--kl-steps", "2", "--max-new-tokens", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(BUNDLED_PAIRS.read_text().splitlines(keepends=True)[::10]))  # 13 pairs
    return path


SWEEP = ["--kl-beta-sweep", "0,0.05,1"]  # 0.05: the KL update's beta, which the sweep measures, not trains again
# One DPO pass, not the 4 that scaling gives 10 pairs: a quarter of both DPO stages' steps (tests/test_cli_bad_inputs.py
# checks the scaled default)
ONE_PASS = ["--dpo-epochs", "1"]


@pytest.fixture(scope="module")
def full_run(small_pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    import lab7_helpers.app.run  # noqa: F401 - binds the real train_kl for the KL update before the patch below
    import lab7_helpers.training as training

    trained_betas = []
    train_kl = training.train_kl
    with pytest.MonkeyPatch.context() as patch:  # counts the sweep's own trainings
        patch.setattr(training, "train_kl", lambda *a, **k: trained_betas.append(k["beta"]) or train_kl(*a, **k))
        assert main(["run", *FAST, "--pairs", str(small_pairs), "--out", str(out), "--with-trl", *SWEEP,
                     *ONE_PASS]) == 0
    assert trained_betas == [0.0, 1.0]
    return out


def test_run_writes_every_output(full_run):
    assert sorted(p.name for p in full_run.iterdir()) == sorted(OUTPUTS)
    metrics = pd.read_csv(full_run / "metrics.csv", index_col="model")
    assert list(metrics.index) == ["base", "kl", "dpo", "dpo_trl"]
    by_length = [c for c in metrics if c.startswith(("pref_acc_chosen_longer", "pref_acc_chosen_shorter"))]
    no_interval = [f"distinct_{n}_{end}" for n in (1, 2) for end in ("low", "high")]
    # by_length is NaN when no pair is of that kind; distinct-n has no interval
    assert metrics.drop(columns=by_length + no_interval).notna().all().all()
    assert metrics[no_interval].isna().all().all()
    assert metrics.loc["base", "reward_acc"] == 0.0 and metrics.loc["base", "kl_to_ref"] == 0.0
    generations = [json.loads(line) for line in (full_run / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 3 and set(generations[0]) == {"prompt", "base", "kl", "dpo", "dpo_trl"}
    report = (full_run / "report.html").read_text()
    assert "random weights" in report and "not run / not finished" not in report
    assert "Our DPO loop vs TRL" in report and "last pass: mean loss" in report
    assert json.loads((full_run / "settings.json").read_text())["dpo_epochs"] == 1
    assert pd.read_csv(full_run / "history_dpo.csv").shape[0] == 10  # one pass over the 10 training pairs
    assert all(f'src="{name}"' in report for name in OUTPUTS if name.endswith(".png"))
    assert pd.read_csv(full_run / "history_kl.csv").shape == (2, 4)
    assert list(pd.read_csv(full_run / "beta_sweep.csv")["beta"]) == [0.0, 0.05, 1.0]


def test_same_seed_gives_byte_identical_outputs_with_or_without_trl(full_run, small_pairs, tmp_path):
    """The same seed again, without TRL's model this time: every other model's lines are the same bytes, so no
    stage's random draws depend on whether TRL's ran."""
    out = tmp_path / "again"
    assert main(["run", *FAST, "--pairs", str(small_pairs), "--out", str(out), *SWEEP, *ONE_PASS]) == 0
    for name in ["history_kl.csv", "history_dpo.csv", "beta_sweep.csv"]:
        assert (out / name).read_bytes() == (full_run / name).read_bytes(), name
    with_trl = (full_run / "metrics.csv").read_text().splitlines()
    assert (out / "metrics.csv").read_text().splitlines() == [line for line in with_trl
                                                               if not line.startswith("dpo_trl,")]
    generations = [json.loads(line) for line in (full_run / "generations.jsonl").read_text().splitlines()]
    assert (out / "generations.jsonl").read_text() == "".join(
        json.dumps({k: v for k, v in row.items() if k != "dpo_trl"}, ensure_ascii=False) + "\n" for row in generations)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lab7_helpers.app.cli", *args], capture_output=True, text=True,
                          timeout=120)


def exit_code(args) -> int:
    try:
        return main(args)
    except SystemExit as stop:  # argparse exits 2 on a bad argument
        return stop.code


@pytest.mark.parametrize("args, message", [
    (["--kl-beta", "-1"], "must be a number >= 0"),
    (["--kl-steps", "0"], "must be a whole number >= 1"),
    (["--dpo-lr", "0"], "must be a number > 0"),
    (["--max-length", "4"], "must be a whole number >= 16"),
    (["--kl-beta-sweep", "0,x"], "'x' is not a number"),
    (["--pairs", "no/such/file.jsonl"], "pairs file not found: no/such/file.jsonl"),
    (["--pairs", "."], "--pairs . is a folder"),
    (["--temperature", "-0.5"], "must be a number >= 0"),
    (["--top-p", "1.5"], "--top-p: must be a number > 0 and <= 1"),
    (["--test-fraction", "1"], "--test-fraction: must be a number between 0 and 1"),
    (["--batch-size", "2.5"], "'2.5' is not a whole number"),
    (["--model", "no-such-org/no-such-model"], "cannot load the model 'no-such-org/no-such-model'"),
])
def test_bad_arguments_exit_2_with_a_message(args, message, capsys):
    assert exit_code(["run", *args]) == 2
    assert message in capsys.readouterr().err


def test_bad_pairs_file_names_every_bad_line_without_a_traceback(tmp_path):
    example = Path(BUNDLED_PAIRS).with_name("lab6_style_example.jsonl")
    result = run_cli("run", "--model", "tiny-gpt2", "--pairs", str(example), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "add --skip-bad-lines to leave them out" in result.stderr and "on_error" not in result.stderr
    for line in (5, 6, 7, 8):
        assert f"lab6_style_example.jsonl:{line}:" in result.stderr


def test_help_a_bad_flag_and_a_bad_pairs_file_answer_before_torch_loads(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a"}\n')
    script = ("import sys\nfrom lab7_helpers.app.cli import main\n"
              f"codes = [main(['run', '--pairs', {str(bad)!r}, '--out', {str(tmp_path / 'out')!r}])]\n"
              "for argv in (['--help'], ['run', '--top-p', '2']):\n"
              "    try:\n        main(argv)\n    except SystemExit as stop:\n        codes.append(stop.code)\n"
              "assert codes == [2, 0, 2], codes\n"
              "assert 'torch' not in sys.modules, 'torch was loaded'\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f'{bad}:1: missing field "rejected"' in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_file_with_one_pair_is_too_small_to_split(tmp_path, capsys):
    one = tmp_path / "one.jsonl"
    one.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    assert exit_code(["run", "--model", "tiny-gpt2", "--pairs", str(one), "--out", str(tmp_path / "o")]) == 2
    assert "need at least 2 pairs" in capsys.readouterr().err


def test_grade_reports_missing_submissions(tmp_path, capsys):
    assert exit_code(["grade", str(tmp_path / "nope.ipynb"), "--out", str(tmp_path / "g")]) == 2
    assert "not found" in capsys.readouterr().err


def test_existing_output_folder_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("earlier results")
    assert exit_code(["run", "--model", "tiny-gpt2", "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "earlier results"


def test_interrupted_run_leaves_a_consistent_folder(small_pairs, tmp_path, monkeypatch, capsys):
    import lab7_helpers.app.run as run_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "train_dpo", interrupted)
    out = tmp_path / "stopped"
    assert main(["run", *FAST, "--pairs", str(small_pairs), "--out", str(out)]) == 130
    assert "interrupted; finished stages are in" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["data_card.csv", "history_kl.csv", "kl_history.png",
                                                    "report.html", "settings.json"]  # no half-written or .tmp files
    report = (out / "report.html").read_text()
    assert "KL update: done" in report and "DPO: not run / not finished" in report
    assert "evaluation: not run / not finished" in report

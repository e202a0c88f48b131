"""The benchmark scripts run (smoke mode: tiny-gpt2, seconds). Their figures are never asserted here."""

import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", ["bench_dpo.py", "bench_generate.py", "bench_main_job.py", "bench_sweep.py"])
def test_benchmark_smoke_mode(script, monkeypatch, capsys):
    """Each script's ``main`` in this process (a fresh one would spend most of the test importing torch);
    ``bench_main_job`` still starts its two jobs as processes of their own."""
    monkeypatch.setattr(sys, "argv", [script, "--smoke"])
    main = runpy.run_path(str(BENCHMARKS / script))["main"]  # not run as __main__: defines main, runs nothing
    assert main() == 0
    out = capsys.readouterr().out
    assert "speedup" in out or "share of the original" in out or "the same numbers both ways: True" in out


def test_notebook_benchmark_names_cells_by_their_work_and_makes_a_lab6_sized_file(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    import bench_notebook

    import lab7_helpers as lab

    assert bench_notebook.cell_name("# train\nchecks.require(ok)\npolicy = train()\nplot()") == "policy = train()"
    assert bench_notebook.cell_name("# only a comment") == "# only a comment"
    sample = lab.load_pairs(lab.BUNDLED_PAIRS)
    pairs = lab.load_pairs(bench_notebook.write_lab6_sized(tmp_path / "lab6.jsonl"))
    assert len(pairs) == 21 and pairs == sample[::6]


def test_gpu_check_counts_as_missing_only_the_figures_the_lab_defines(tiny, tokenizer, pairs, capsys):
    """The false alarm of its first GPU run, reproduced on a CPU: distinct-n has no interval by design, and neither
    has a rate over an empty group; a NaN anywhere else is still caught. On a CPU it stops with one sentence."""
    sys.path.insert(0, str(BENCHMARKS))
    import gpu_check

    import lab7_helpers as lab

    same_length = [{**p, "rejected": p["chosen"][::-1]} for p in pairs]  # chosen never the longer one
    metrics, _ = lab.evaluate_models({"base": tiny[0]}, tiny[0], tokenizer, same_length, max_new_tokens=3,
                                     progress=False)
    old_check = metrics.drop(columns=[c for c in metrics if "chosen_" in c]).notna().all().all()
    assert not old_check  # what the first GPU run reported as a failure
    assert gpu_check.finite_where_defined(metrics) == []
    metrics.loc["base", "kl_to_ref_high"] = float("nan")
    assert gpu_check.finite_where_defined(metrics) == ["base.kl_to_ref_high"]
    assert gpu_check.main() == 2  # this machine has no GPU
    assert capsys.readouterr().out == "gpu_check: no CUDA GPU here; run it on a GPU machine.\n"

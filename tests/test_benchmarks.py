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

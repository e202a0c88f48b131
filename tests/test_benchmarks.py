"""The benchmark scripts run (smoke mode: tiny-gpt2, seconds). Their figures are never asserted here."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", ["bench_dpo.py", "bench_generate.py", "bench_main_job.py"])
def test_benchmark_smoke_mode(script):
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke"], capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "speedup" in result.stdout or "share of the original" in result.stdout


def test_notebook_benchmark_names_cells_by_their_work_and_makes_a_lab6_sized_file(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    import bench_notebook

    import lab7_helpers as lab

    assert bench_notebook.cell_name("# train\nchecks.require(ok)\npolicy = train()\nplot()") == "policy = train()"
    assert bench_notebook.cell_name("# only a comment") == "# only a comment"
    sample = lab.load_pairs(lab.BUNDLED_PAIRS)
    pairs = lab.load_pairs(bench_notebook.write_lab6_sized(tmp_path / "lab6.jsonl"))
    assert len(pairs) == 21 and pairs == sample[::6]

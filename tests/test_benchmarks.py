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

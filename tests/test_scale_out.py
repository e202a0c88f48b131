"""``accelerate launch`` runs TRL's DPO on several processes with the losses of one process and the same global
batch (two CPU processes through gloo here; GPUs in a course that outgrows one machine)."""

import socket
import subprocess
import sys

import numpy as np
import pandas as pd

from lab7_helpers import BUNDLED_PAIRS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(BUNDLED_PAIRS.read_text().splitlines(keepends=True)[:8]))  # 6 train pairs: 3 steps
    job = ["-m", "lab7_helpers.app.scale_out", "--model", "tiny-gpt2", "--pairs", str(pairs),
           "--global-batch-size", "2"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    # both jobs at once: most of their time is start-up (importing torch and TRL), which two cores share well
    jobs = {name: subprocess.Popen([*command, "--out", str(tmp_path / f"{name}.csv")], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd=tmp_path)
            for name, command in (("one", [sys.executable, *job]), ("two", [*launch, *job]))}
    try:
        outputs = {name: process.communicate(timeout=300) for name, process in jobs.items()}
    finally:
        for process in jobs.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for name, process in jobs.items():
        assert process.returncode == 0, outputs[name][1][-3000:]
    assert "on 1 process(es)" in outputs["one"][0] and "on 2 process(es)" in outputs["two"][0]
    one, two = (pd.read_csv(tmp_path / f"{name}.csv", index_col="step") for name in ("one", "two"))
    assert len(one) == len(two) == 3
    assert np.allclose(two.to_numpy(), one.to_numpy(), atol=1e-5, rtol=0)
    assert one["rewards/margins"].iloc[1:].abs().min() > 0  # it trained: the comparison is not of zeros

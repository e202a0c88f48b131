"""The speed engine gives the teaching core's numbers: each of its steps against the core's plain function,
and the whole main job against its outputs from before the engine was split off."""

import json
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lab7_helpers import engine, freeze, trainable_copy
from lab7_helpers.app.cli import main
from lab7_helpers.data import encode_pair, pad_batch
from lab7_helpers.engine import packed
from lab7_helpers.scoring import reference_logits, response_logits
from lab7_helpers.training import batches, make_optimizer, optimizer_step, train_kl

GOLDEN = Path(__file__).parent / "fixtures" / "golden_tiny_run"


def test_importing_the_package_changes_nothing_in_the_process():
    code = """
import os, sys, torch, torch.nn.functional as F
env, linear, embedding, modules = dict(os.environ), F.linear, torch.nn.Embedding.forward, set(sys.modules)
import lab7_helpers
assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())
assert F.linear is linear and torch.nn.Embedding.forward is embedding
assert not [m for m in set(sys.modules) - modules if m.startswith("lab7_helpers.engine.")], "engine loaded"
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_importing_the_package_loads_nothing_heavy_until_a_name_is_used():
    code = """
import sys
import lab7_helpers as lab
assert "torch" not in sys.modules and "transformers" not in sys.modules
assert set(lab.__all__) <= set(dir(lab))
assert all(getattr(lab, name) is not None for name in lab.__all__)
from lab7_helpers import checks, load_pairs
assert callable(lab.train_dpo) and lab.training.train_dpo is lab.train_dpo and callable(lab.data_card)
assert checks.TODOS and load_pairs is lab.load_pairs
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("max_length", [256, 40])  # 40: the two prompts of a pair are cut differently
@pytest.mark.parametrize("make_model", ["tiny-gpt2", "llama"])
def test_packed_response_logits_equal_the_core(make_model, max_length, tiny, tokenizer, pairs, tiny_llama):
    model = tiny[0] if make_model == "tiny-gpt2" else tiny_llama()
    batch_pairs = [{"prompt": "word " * 40, "chosen": "Short.", "rejected": "A much longer answer " * 6}, *pairs]
    with torch.no_grad():
        core = response_logits(model, tokenizer, batch_pairs, max_length)
        fast = packed.response_logits(model, tokenizer, batch_pairs, max_length)
    assert torch.equal(core[2], fast[2]) and torch.equal(core[1], fast[1])  # same tokens, same layout
    torch.testing.assert_close(fast[0], core[0], rtol=1e-5, atol=1e-5)


def test_a_students_loss_receives_the_batches_logits_and_labels_on_a_cpu(tiny, tokenizer, pairs):
    """What the notebook promises, whatever the device: ``[B, T, V]`` logits of the policy and the reference and
    ``[B, T]`` labels, those of the step's batch."""
    from lab7_helpers.losses import kl_regularized_loss

    seen = []

    def recording_loss(policy_logits, ref_logits, labels, beta):
        seen.append((tuple(policy_logits.shape), tuple(ref_logits.shape), labels.clone()))
        return kl_regularized_loss(policy_logits, ref_logits, labels, beta)

    policy = trainable_copy(tiny[0])
    assert engine.applies(policy, tiny[0])  # the CPU engine is on
    train_kl(policy, tiny[0], tokenizer, pairs, steps=3, batch_size=2, progress=False, loss_fn=recording_loss)
    vocab = tiny[0].config.vocab_size
    assert len(seen) == 3
    for idx, (policy_shape, ref_shape, labels) in zip(batches(3, 2, 3, 0), seen):
        batch = pad_batch([encode_pair(tokenizer, pairs[i]["prompt"], pairs[i]["chosen"]) for i in idx],
                          tokenizer.pad_token_id)
        assert policy_shape == ref_shape == (*batch["input_ids"].shape, vocab)
        assert torch.equal(labels, batch["labels"])


@pytest.mark.parametrize("make_model", ["tiny-gpt2", "llama"])
def test_reference_logits_equal_the_core_and_the_transformer_runs_once_per_batch(make_model, tiny, tokenizer,
                                                                                  pairs, tiny_llama):
    """The engine's reference logits are the core's, bit for bit; a frozen reference's transformer runs once per
    batch for the process, again once its weights are written in place; a reference that can train runs each time."""
    ref = freeze(trainable_copy(tiny[0]) if make_model == "tiny-gpt2" else tiny_llama())  # none kept yet
    encoded = [encode_pair(tokenizer, p["prompt"], p["chosen"]) for p in pairs]
    batches = [pad_batch([e], tokenizer.pad_token_id) for e in encoded] + [pad_batch(encoded, tokenizer.pad_token_id)]
    runs = []
    ref.base_model.register_forward_hook(lambda *_: runs.append(1))
    plain = engine.Steps(reference_logits=reference_logits)

    def both_ways(model) -> None:
        with engine.session(model, plain=plain) as fast:  # the same linear layers both ways
            core = [reference_logits(model, batches, nullcontext)(i) for i in range(len(batches))]
            for at in (fast.reference_logits(model, batches, nullcontext) for _ in range(2)):  # two trainings
                assert all(torch.equal(at(i), logits) for i, logits in enumerate(core))

    both_ways(ref)
    assert len(runs) == 2 * len(batches)  # the core's pass, then the engine's first only
    with torch.no_grad():
        ref.get_output_embeddings().weight.mul_(1.5)  # written in place: tied to the input embedding too
    both_ways(ref)
    assert len(runs) == 4 * len(batches)
    both_ways(trainable_copy(ref))  # can train: the core's function, each time
    assert len(runs) == 7 * len(batches)


def test_engine_step_equals_the_core_step(tiny):
    input_ids = torch.tensor([[1, 2, 3, 4]])
    params = []
    for use_engine in (True, False):
        policy = trainable_copy(tiny[0])
        optimizer = make_optimizer(policy, 1e-3)
        with engine.session(policy, training=True, plain=engine.Steps(optimizer_step=optimizer_step)) as fast:
            loss = policy(input_ids=input_ids).logits.sum() * 100  # gradient norm far above the clip
            (fast.optimizer_step if use_engine else optimizer_step)(loss, optimizer, None, 1.0)
        assert all(p.grad is None for p in policy.parameters())
        params.append([p.detach() for p in policy.parameters()])
    for fast, core in zip(*params):
        torch.testing.assert_close(fast, core, rtol=1e-5, atol=1e-6)


def test_session_hands_out_the_core_steps_when_switched_off(tiny, monkeypatch):
    plain = engine.Steps(response_logits=response_logits, optimizer_step=optimizer_step)
    monkeypatch.setenv("LAB7_ENGINE", "0")
    with engine.session(tiny[0], training=True, plain=plain) as fast:
        assert fast is plain
        assert "forward" not in tiny[0].lm_head.__dict__  # nothing patched


# The fixture was written on 2 torch threads and the tests run on 1, which splits a DPO step's float32 sums
# differently. A summed log-prob near -100 nats is exact to one float32 step there (8e-6), so the implicit rewards,
# 0.1 x differences of such sums, move by up to 3e-6 (measured): history_dpo.csv compares within 5e-6. TRL's history
# moves the same way with the processor: on an AMD EPYC host (MKL takes other kernels there) its rewards read up to
# 6e-6 from the fixture's, written on an Intel one, so history_dpo_trl.csv compares within 1e-5, and that model's
# held-out reward margin in metrics.csv (2.0e-6 off there) within 5e-6.
ATOL = {"history_dpo.csv": 5e-6, "history_dpo_trl.csv": 1e-5, "metrics.csv": 5e-6}


def test_main_job_outputs_equal_those_from_before_the_engine_split(tmp_path):
    """``lab7 run`` on tiny-gpt2 writes the histories, metrics and generations it wrote before the redesign
    (``tests/fixtures/golden_tiny_run``, from commit 190fed8): to the digits written, or within 1e-6 where the
    sum order changed (``ATOL``). ``beta_sweep.csv`` was written again when the sweep began to measure on the pairs
    its steps trained on (here 2 of 10), not on every training pair. ``repetition`` is now the original lab's formula
    (1 - unique words / words, 0 under 10 words); recomputed from the fixture's generations.jsonl (2-4 words each)
    it is 0 everywhere, as the fixture already says, so the fixture is unchanged."""
    pairs = tmp_path / "pairs.jsonl"
    from lab7_helpers import BUNDLED_PAIRS

    pairs.write_text("".join(BUNDLED_PAIRS.read_text().splitlines(keepends=True)[::10]))  # 13 pairs
    out = tmp_path / "run"
    assert main(["run", "--model", "tiny-gpt2", "--kl-steps", "2", "--max-new-tokens", "4", "--device", "cpu",
                 "--pairs", str(pairs), "--out", str(out), "--with-trl", "--kl-beta-sweep", "0,1",
                 *ORIGINAL_SETTINGS]) == 0
    for name in ["history_kl.csv", "history_dpo.csv", "history_dpo_trl.csv", "beta_sweep.csv", "metrics.csv"]:
        golden, now = pd.read_csv(GOLDEN / name, index_col=0), pd.read_csv(out / name, index_col=0)
        assert list(golden.index) == list(now.index), name
        assert list(golden.columns) == [c for c in now.columns if c in golden.columns], name
        assert np.allclose(now[golden.columns].to_numpy(float), golden.to_numpy(float), rtol=1e-5,
                           atol=ATOL.get(name, 1e-6), equal_nan=True), name
    lines = [json.loads(line) for line in (GOLDEN / "generations.jsonl").read_text().splitlines()]
    assert [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()] == lines


ORIGINAL_SETTINGS = ["--original-settings"]  # the original lab's settings (one DPO pass), as the fixture ran them

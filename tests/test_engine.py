"""The speed engine gives the teaching core's numbers: each of its steps against the core's plain function,
and the whole main job against its outputs from before the engine was split off."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lab7_helpers import engine, trainable_copy
from lab7_helpers.app.cli import main
from lab7_helpers.data import encode_pair, pad_batch
from lab7_helpers.engine import packed
from lab7_helpers.scoring import response_logits
from lab7_helpers.training import kl_logits_and_labels, make_optimizer, optimizer_step

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


def test_kl_logits_and_labels_give_the_core_loss(tiny, tokenizer, pairs):
    """The engine hands the KL update's loss the response positions only, as one sequence; the loss, the NLL,
    the KL and the gradient are those of the [B, T, V] layout."""
    from lab7_helpers.losses import kl_regularized_loss
    from lab7_helpers.training import kl_logits_and_labels

    batch = pad_batch([encode_pair(tokenizer, p["prompt"], p["chosen"]) for p in pairs], tokenizer.pad_token_id)
    policy, ref = trainable_copy(tiny[0]), tiny[0]
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # the policy differs from the reference: a KL above 0
    results = []
    for twin in (kl_logits_and_labels, packed.kl_logits_and_labels):
        logits, labels = twin(policy, batch)
        with torch.no_grad():
            ref_logits, _ = twin(ref, batch)
        values = kl_regularized_loss(logits, ref_logits, labels, beta=0.5)
        values[0].backward()
        grads = [p.grad.clone() for p in policy.parameters()]
        policy.zero_grad(set_to_none=True)
        results.append((torch.stack([v.detach() for v in values]), grads, logits.shape))
    (core, core_grads, core_shape), (fast, fast_grads, fast_shape) = results
    n_response = int((batch["labels"] != -100).sum())
    assert fast_shape == (1, n_response + 1, core_shape[-1]) and core_shape[:2] == batch["input_ids"].shape
    assert core[2] > 1e-4  # a KL that counts
    torch.testing.assert_close(fast, core, rtol=1e-5, atol=1e-7)
    for a, b in zip(fast_grads, core_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_engine_step_equals_the_core_step(tiny):
    input_ids = torch.tensor([[1, 2, 3, 4]])
    params = []
    for use_engine in (True, False):
        policy = trainable_copy(tiny[0])
        optimizer = make_optimizer(policy, 1e-3)
        with engine.session(policy, training=True) as fast:
            loss = policy(input_ids=input_ids).logits.sum() * 100  # gradient norm far above the clip
            (fast.step if use_engine else optimizer_step)(loss, optimizer, None)
        assert all(p.grad is None for p in policy.parameters())
        params.append([p.detach() for p in policy.parameters()])
    for fast, core in zip(*params):
        torch.testing.assert_close(fast, core, rtol=1e-5, atol=1e-6)


def test_session_hands_out_the_core_steps_when_switched_off(tiny, monkeypatch):
    from lab7_helpers.scoring import response_logits as core_response_logits

    monkeypatch.setenv("LAB7_ENGINE", "0")
    with engine.session(tiny[0], training=True) as fast:
        assert fast.kl_logits_and_labels is kl_logits_and_labels and fast.step is optimizer_step
        assert fast.response_logits is core_response_logits
        assert "forward" not in tiny[0].lm_head.__dict__  # nothing patched


# The fixture was written on 2 torch threads and the tests run on 1, which splits a DPO step's float32 sums
# differently. A summed log-prob near -100 nats is exact to one float32 step there (8e-6), so the implicit rewards,
# 0.1 x differences of such sums, move by up to 3e-6 (measured): history_dpo.csv compares within 5e-6. TRL's history
# moves the same way with the processor: on an AMD EPYC host (MKL takes other kernels there) its rewards read up to
# 6e-6 from the fixture's, written on an Intel one, so history_dpo_trl.csv compares within 1e-5, and that model's
# held-out reward margin in metrics.csv (1.0e-6 off there) within 5e-6.
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


def test_reference_logits_on_disk_equal_the_core_and_park_the_reference(tiny, tokenizer, pairs):
    from contextlib import nullcontext

    from lab7_helpers.training import reference_logits

    ref = tiny[0]
    step_batches = [pad_batch([encode_pair(tokenizer, p["prompt"], p["chosen"])], tokenizer.pad_token_id)
                    for p in [*pairs, pairs[0]]]  # a batch seen twice is computed once
    core = reference_logits(ref, step_batches, nullcontext)
    expected = [core(i) for i in range(len(step_batches))]
    policy = trainable_copy(ref)
    with engine.session(policy, ref, training=True) as fast:
        at = fast.reference_logits(ref, step_batches, nullcontext)
        assert all(p.numel() == 0 for p in ref.parameters())  # parked on disk (tiny-gpt2 is not memory-mapped)
        for i, batch in enumerate(step_batches):
            scored = batch["labels"][:, 1:] != -100  # the positions that predict a response token
            rows = at(i)[0, :-1]  # [N, V]: the layout of packed.kl_logits_and_labels
            assert at(i)[0, -1].eq(0).all()
            torch.testing.assert_close(rows, expected[i][:, :-1][scored], rtol=1e-5, atol=1e-5)
    assert all(p.numel() > 0 for p in ref.parameters())  # back in memory after the session


def test_reference_rows_are_computed_once_per_process_and_forgotten_when_the_reference_changes(tiny, tokenizer,
                                                                                                 pairs, monkeypatch):
    from lab7_helpers.engine.disk import REFERENCE_ROWS
    from lab7_helpers.evaluation import nll_and_kl
    from lab7_helpers.models import freeze
    from lab7_helpers.training import kl_beta_sweep, train_kl

    ref = freeze(trainable_copy(tiny[0]))  # a private reference: this test writes into its weights
    args = dict(lr=1e-3, steps=4, seed=0, progress=False)

    def trained(beta: float, fresh_process: bool):
        if fresh_process:
            REFERENCE_ROWS.clear()
        before = REFERENCE_ROWS.computed
        history = train_kl(trainable_copy(ref), ref, tokenizer, pairs, beta=beta, **args)
        return history, REFERENCE_ROWS.computed - before

    (alone_0, n_rows), (alone_1, _) = trained(0.0, True), trained(1.0, True)
    REFERENCE_ROWS.clear()
    (shared_0, first), (shared_1, second) = trained(0.0, False), trained(1.0, False)
    assert n_rows > 0 and (first, second) == (n_rows, 0)  # tiny-gpt2 is parked on disk and copied back between
    pd.testing.assert_frame_equal(alone_0, shared_0, check_exact=True)
    pd.testing.assert_frame_equal(alone_1, shared_1, check_exact=True)

    sweep = kl_beta_sweep(ref, tokenizer, pairs, [0.0, 1.0], **args)  # trains nothing new for the reference
    computed = REFERENCE_ROWS.computed
    assert sweep.equals(kl_beta_sweep(ref, tokenizer, pairs, [0.0, 1.0], **args))  # and measures on stored rows
    assert REFERENCE_ROWS.computed == computed

    with torch.no_grad():
        next(ref.parameters()).mul_(1.5)  # a changed reference: its old rows must not be served
    changed = nll_and_kl(tiny[0], ref, tokenizer, pairs)
    assert REFERENCE_ROWS.computed > computed
    monkeypatch.setenv("LAB7_ENGINE", "0")  # the core's own path, which stores nothing
    assert nll_and_kl(tiny[0], ref, tokenizer, pairs) == pytest.approx(changed, rel=1e-5, abs=1e-6)


def test_reference_row_store_keeps_at_most_its_limit_and_the_batches_in_use(tiny, tokenizer, pairs, monkeypatch):
    from contextlib import nullcontext

    from lab7_helpers.engine.disk import REFERENCE_ROWS

    ref = tiny[0]
    step_batches = [pad_batch([encode_pair(tokenizer, p["prompt"], p["chosen"])], tokenizer.pad_token_id)
                    for p in pairs]
    monkeypatch.setattr(REFERENCE_ROWS, "limit_bytes", 1)
    REFERENCE_ROWS.clear()
    first = REFERENCE_ROWS.files(ref, step_batches[:2], nullcontext)
    assert all(path.exists() for path in first)  # in use by this call: kept over the limit
    later = REFERENCE_ROWS.files(ref, step_batches[2:], nullcontext)
    assert not any(path.exists() for path in first) and all(path.exists() for path in later)
    REFERENCE_ROWS.clear()
    assert not any(path.exists() for path in later)

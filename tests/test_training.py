import contextlib
import math
import platform
import subprocess
import sys

import pandas as pd
import pytest
import torch
import transformers

from lab7_helpers import nll_and_kl, trainable_copy
from lab7_helpers.training import batches, kl_beta_sweep, train_dpo, train_kl
from lab7_helpers.app.trl_dpo import train_dpo_trl


def test_batches_cover_every_pair_once_per_pass():
    out = batches(5, 2, 6, seed=0)
    assert [len(b) for b in out] == [2, 2, 1, 2, 2, 1]
    assert sorted(sum(out[:3], [])) == sorted(sum(out[3:], [])) == list(range(5))
    assert out == batches(5, 2, 6, seed=0) and out != batches(5, 2, 6, seed=1)


def test_train_kl_history_and_beta_changes_the_trajectory(tiny, tokenizer, pairs):
    ref = tiny[0]
    runs = {}
    for beta in (0.0, 5.0):
        policy = trainable_copy(ref)
        runs[beta] = train_kl(policy, ref, tokenizer, pairs, beta=beta, lr=1e-3, steps=6, progress=False)
    history = runs[5.0]
    assert list(history.columns) == ["loss", "nll", "kl"] and list(history.index) == [1, 2, 3, 4, 5, 6]
    assert history.notna().all().all() and (history["kl"] >= 0).all()
    assert history["loss"].to_numpy() == pytest.approx((history["nll"] + 5.0 * history["kl"]).to_numpy(), rel=1e-5)
    assert runs[0.0]["nll"].iloc[0] == pytest.approx(history["nll"].iloc[0])  # same start, same first batch
    assert history["kl"].iloc[0] == 0.0  # policy == reference before the first update
    assert abs(runs[0.0]["nll"].iloc[-1] - history["nll"].iloc[-1]) > 1e-4


def test_kl_to_reference_shrinks_as_beta_grows(tiny, tokenizer, pairs):
    # A random model's NLL (~10 nats) dwarfs its KL (~0.01), so beta must be large to matter here.
    sweep = kl_beta_sweep(tiny[0], tokenizer, pairs, [0.0, 10.0, 100.0], lr=1e-3, steps=10, progress=False)
    assert list(sweep.index) == [0.0, 10.0, 100.0]
    assert sweep["kl"].is_monotonic_decreasing and sweep["kl"].iloc[0] > 3 * sweep["kl"].iloc[-1]
    assert sweep["nll"].iloc[0] < sweep["nll"].iloc[-1]


def test_train_dpo_lowers_the_loss_and_does_not_touch_the_reference(tiny, tokenizer, pairs):
    ref = tiny[0]
    before = [p.clone() for p in ref.parameters()]
    policy = trainable_copy(ref)
    history = train_dpo(policy, ref, tokenizer, pairs, beta=0.1, lr=1e-3, epochs=8, batch_size=3, progress=False)
    assert len(history) == 8
    assert history["loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-6)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0] - 0.05
    assert history["rewards/accuracies"].iloc[-1] == 1.0 and history["rewards/margins"].iloc[-1] > 0
    assert all(torch.equal(a, b) for a, b in zip(before, ref.parameters()))


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_train_dpo_matches_trl_step_by_step(tiny, tokenizer, pairs, loss_type):
    """Every loss the lab accepts, through the whole loop. Batch = every pair, so both see the same data at each
    step. Step 1 starts from policy == ref (sigmoid: log 2; IPO: 1 / (2 beta) ** 2 = 25); step 2 follows one
    identical AdamW update (TRL's linear LR decay starts from the same LR at step 1)."""
    ref = tiny[0]
    ours = train_dpo(trainable_copy(ref), ref, tokenizer, pairs, lr=1e-3, epochs=2, batch_size=3,
                     loss_type=loss_type, progress=False)
    trl = train_dpo_trl(trainable_copy(ref), ref, tokenizer, pairs, lr=1e-3, epochs=2, batch_size=3,
                        loss_type=loss_type)
    assert list(trl.columns) == [c for c in ours.columns if not c.startswith("logps_vs_ref/")]  # TRL logs no logps
    # transformers 4.x rounds the Trainer's logged loss to 4 decimals (test_trl_parity compares unrounded values)
    tolerance = 1e-5 if int(transformers.__version__.split(".")[0]) >= 5 else 5e-5 + 1e-6
    assert abs(ours["loss"].iloc[0] - trl["loss"].iloc[0]) < tolerance
    assert abs(ours["loss"].iloc[1] - trl["loss"].iloc[1]) < tolerance
    assert ours["loss"].iloc[1] < ours["loss"].iloc[0] - 1e-3  # the update did something
    assert ours["rewards/margins"].iloc[1] == pytest.approx(trl["rewards/margins"].iloc[1], abs=1e-5)


def test_nan_loss_stops_training_with_a_clear_message(tiny, tokenizer, pairs):
    policy = trainable_copy(tiny[0])
    with torch.no_grad():
        policy.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"KL update: the loss became nan at step 1 .*prompt"):
        train_kl(policy, tiny[0], tokenizer, pairs, steps=2, progress=False)


ALLOCATOR_CHECK = """
import psutil, torch
from lab7_helpers.engine.memory import reuse_freed_memory
MB, process = 2**20, psutil.Process()

def rss_after_a_freed_64mb_block():
    block = torch.ones(16 * MB)  # 64 MB, above glibc's largest automatic mmap threshold (32 MB)
    del block
    return process.memory_info().rss

before = process.memory_info().rss
assert rss_after_a_freed_64mb_block() - before < 16 * MB, "by default a freed block goes straight back"
with reuse_freed_memory():
    with reuse_freed_memory():
        assert rss_after_a_freed_64mb_block() - before > 48 * MB, "kept for the next step to reuse"
    assert process.memory_info().rss - before > 48 * MB, "an inner block does not trim"
assert process.memory_info().rss - before < 16 * MB, "handed back on the way out"
assert rss_after_a_freed_64mb_block() - before < 16 * MB, "glibc's defaults are back"
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting only exists on glibc")
def test_reuse_freed_memory_keeps_freed_blocks_then_returns_them():
    # A fresh interpreter: in this one, earlier tests leave free heap space that blurs what RSS shows.
    result = subprocess.run([sys.executable, "-c", ALLOCATOR_CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_train_dpo_accepts_the_policy_as_its_own_reference(tiny, tokenizer, pairs):
    # The reference log-probs are taken before the first update, so the policy may serve as reference.
    policy = trainable_copy(tiny[0])
    history = train_dpo(policy, policy, tokenizer, pairs, lr=1e-3, epochs=2, batch_size=3, progress=False)
    assert history["loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-6)
    assert history["loss"].iloc[1] < history["loss"].iloc[0]
    assert all(p.numel() > 0 for p in policy.parameters())


def test_train_kl_restores_the_reference_and_accepts_the_policy_as_reference(tiny, tokenizer, pairs):
    ref = tiny[0]
    before = [p.clone() for p in ref.parameters()]
    train_kl(trainable_copy(ref), ref, tokenizer, pairs, lr=1e-3, steps=2, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, ref.parameters()))  # back from disk, unchanged
    policy = trainable_copy(ref)  # its own reference: the KL to itself is 0 at every step, the loss is the NLL
    history = train_kl(policy, policy, tokenizer, pairs, beta=1.0, lr=1e-3, steps=3, batch_size=3, progress=False)
    assert (history["kl"] == 0.0).all() and (history["loss"] == history["nll"]).all()


@pytest.mark.parametrize("make_model", ["tiny-gpt2", "llama"])
def test_tied_embedding_gradient_in_place_gives_the_default_gradient(make_model, tiny, tokenizer, pairs,
                                                                     tiny_llama):
    from lab7_helpers.engine.packed import encode_pairs_shared_prompt, response_logits
    from lab7_helpers.engine.step import tied_embedding_gradient_in_place
    from lab7_helpers.losses import picked_logprobs
    from lab7_helpers.scoring import sum_by_side

    # nn.Embedding gives the row of padding_idx no gradient from the input side (SmolLM2's is its EOS), and neither
    # may we: the Llama's padding_idx is a token of the first prompt, so that its row would get one.
    batch = encode_pairs_shared_prompt(tokenizer, pairs)
    prompt_token = batch["input_ids"][0, 1].item()
    model = tiny[0] if make_model == "tiny-gpt2" else tiny_llama(num_hidden_layers=1, tie_word_embeddings=True,
                                                                   pad_token_id=prompt_token)
    grads = []
    for in_place in (False, True):
        policy = trainable_copy(model)
        embedding = policy.get_input_embeddings()
        with tied_embedding_gradient_in_place(policy) if in_place else contextlib.nullcontext():
            assert ("forward" in embedding.__dict__) is in_place
            logits, targets, side = response_logits(policy, tokenizer, pairs)
            chosen, rejected, _, _ = sum_by_side(picked_logprobs(logits, targets), side)
            (chosen - rejected).sum().backward()
        assert "forward" not in embedding.__dict__
        grads.append(embedding.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
    assert grads[0][batch["input_ids"].unique()].abs().sum() > 0


def test_tied_embedding_gradient_in_place_leaves_untied_models_alone(tiny_llama):
    from lab7_helpers.engine.step import tied_embedding_gradient_in_place

    untied = tiny_llama(num_hidden_layers=1)
    with tied_embedding_gradient_in_place(untied):
        assert "forward" not in untied.get_input_embeddings().__dict__


def test_optimizer_step_frees_the_gradients(tiny):
    from lab7_helpers.training import make_optimizer, optimizer_step

    policy = trainable_copy(tiny[0])
    optimizer = make_optimizer(policy, 1e-3)
    before = policy.lm_head.weight.detach().clone()
    optimizer_step(policy(input_ids=torch.tensor([[1, 2, 3]])).logits.sum(), optimizer, None)
    assert all(p.grad is None for p in policy.parameters())  # not held through the next forward pass
    assert not torch.equal(before, policy.lm_head.weight)


@pytest.mark.parametrize("loss_scale", [1e-5, 100.0])  # gradient norm below and far above MAX_GRAD_NORM
def test_clipped_step_equals_clip_grad_norm_then_step(tiny, loss_scale):
    from lab7_helpers.engine.step import clipped_step
    from lab7_helpers.training import MAX_GRAD_NORM, make_optimizer

    input_ids = torch.tensor([[1, 2, 3, 4]])
    states = []
    for fold_into_optimizer in (True, False):
        policy = trainable_copy(tiny[0])
        optimizer = make_optimizer(policy, 1e-3)
        assert optimizer.defaults["fused"]  # the path under test
        (policy(input_ids=input_ids).logits.sum() * loss_scale).backward()
        params = list(policy.parameters())
        if fold_into_optimizer:
            clipped_step(optimizer, params, MAX_GRAD_NORM)
            assert not hasattr(optimizer, "grad_scale")  # a later step (or GradScaler) must not see it
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
        states.append((params, [optimizer.state[p]["exp_avg"] for p in params]))
    assert (norm > MAX_GRAD_NORM) == (loss_scale > 1)
    (params, exp_avg), (expected_params, expected_exp_avg) = states
    # Adam's step hardly depends on the gradient's scale, so the first moment is what shows the clipping
    for got, expected in zip(exp_avg + params, expected_exp_avg + expected_params):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8)


def test_beta_sweep_measures_an_already_trained_model_to_the_same_numbers(tiny, tokenizer, pairs):
    args = dict(lr=1e-3, steps=3, seed=0, progress=False)
    trained = trainable_copy(tiny[0])
    train_kl(trained, tiny[0], tokenizer, pairs, beta=1.0, **args)
    reused = kl_beta_sweep(tiny[0], tokenizer, pairs, [0.0, 1.0], trained={1.0: trained}, **args)
    pd.testing.assert_frame_equal(reused, kl_beta_sweep(tiny[0], tokenizer, pairs, [0.0, 1.0], **args))
    untrained = kl_beta_sweep(tiny[0], tokenizer, pairs, [1.0], trained={1.0: trainable_copy(tiny[0])}, **args)
    assert untrained.loc[1.0, "kl"] == 0.0  # the model given is measured as it is, not trained again


def test_beta_sweep_measures_the_pairs_its_steps_trained_on(tiny, tokenizer, pairs):
    args = dict(lr=1e-3, steps=2, seed=1, progress=False)
    trained = trainable_copy(tiny[0])
    train_kl(trained, tiny[0], tokenizer, pairs, beta=1.0, **args)
    seen = [pairs[i] for idx in batches(len(pairs), 1, 2, 1) for i in idx]
    assert len(seen) == 2 < len(pairs)
    sweep = kl_beta_sweep(tiny[0], tokenizer, pairs, [1.0], trained={1.0: trained}, **args)
    assert tuple(sweep.loc[1.0]) == nll_and_kl(trained, tiny[0], tokenizer, seen)
    assert tuple(sweep.loc[1.0]) != nll_and_kl(trained, tiny[0], tokenizer, pairs)


READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


@pytest.mark.parametrize("engine_on", [False, True])  # off: the path a GPU takes
@pytest.mark.parametrize("batch_size", [1, 8])
def test_a_dpo_step_reads_its_numbers_back_once(tiny, tokenizer, monkeypatch, batch_size, engine_on):
    """On a GPU every read of a computed value makes the loop wait for the device. Counted here on the CPU as
    the reads of floating-point and boolean tensors (integer ones are token bookkeeping, made on the CPU): the
    reads of two passes minus those of one, divided by the steps of a pass."""
    monkeypatch.setenv("LAB7_ENGINE", "1" if engine_on else "0")
    pairs = [{"prompt": f"Question {i}?", "chosen": f"A helpful answer number {i}.", "rejected": "No."}
             for i in range(8)]
    reads = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if self.dtype.is_floating_point or self.dtype == torch.bool:
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    counts = []
    for epochs in (1, 2):
        reads.clear()
        train_dpo(trainable_copy(tiny[0]), tiny[0], tokenizer, pairs, lr=1e-3, epochs=epochs, batch_size=batch_size,
                  progress=False)
        counts.append(len(reads))
    steps_per_pass = len(pairs) // batch_size
    assert (counts[1] - counts[0]) / steps_per_pass == 1, (counts, reads)

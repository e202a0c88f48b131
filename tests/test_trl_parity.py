"""Our DPO loss against TRL's own DPOTrainer.compute_loss, on the same tiny model and pairs."""

import pytest
import torch

from lab7_helpers import dpo_loss, encode_pairs_for_dpo, sequence_logprobs
from lab7_helpers.app.trl_dpo import make_dpo_trainer
from lab7_helpers.models import remove_forward_patch


@pytest.fixture
def trainer_and_batch(tiny, policy, tokenizer, pairs, tmp_path, unpatched_reference):
    def build(loss_type):
        trainer = make_dpo_trainer(policy, tiny[0], tokenizer, pairs, beta=0.1, batch_size=len(pairs),
                                   output_dir=str(tmp_path), loss_type=loss_type, gradient_checkpointing=False)
        return trainer, next(iter(trainer.get_train_dataloader()))
    return build


@pytest.fixture
def unpatched_reference(tiny):
    """TRL's trainer patches the reference's forward; the session's shared tiny model must not keep that patch
    for the tests that run after these (which ones do depends on the order)."""
    yield
    remove_forward_patch(tiny[0])


def our_logps(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = sequence_logprobs(logits, batch["labels"])
    n_tokens = (batch["labels"][:, 1:] != -100).sum(-1)
    return logps, n_tokens


def test_trl_tokenizes_exactly_like_encode_pair(trainer_and_batch, tokenizer, pairs):
    trainer, trl_batch = trainer_and_batch("sigmoid")
    ours = encode_pairs_for_dpo(tokenizer, pairs)
    order = trl_batch["input_ids"][:, 0]  # the sampler may shuffle: match rows by content
    assert trl_batch["input_ids"].shape == ours["input_ids"].shape
    trl_rows = sorted(trl_batch["input_ids"].tolist())
    assert trl_rows == sorted(ours["input_ids"].tolist()), order
    trl_labels = trl_batch["input_ids"].masked_fill(trl_batch["completion_mask"] == 0, -100)
    assert sorted(trl_labels.tolist()) == sorted(ours["labels"].tolist())


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_equals_trl_compute_loss(trainer_and_batch, tiny, policy, loss_type):
    trainer, batch = trainer_and_batch(loss_type)
    policy.train()
    trl_loss = trainer.compute_loss(policy, batch).item()

    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    ours = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
    logps, n_tokens = our_logps(policy, ours)
    with torch.no_grad():
        ref_logps, _ = our_logps(tiny[0], ours)
    b = len(logps) // 2  # each loss's scaling (IPO: per-token means) happens inside dpo_loss
    losses, chosen_rewards, rejected_rewards = dpo_loss(logps[:b], logps[b:], ref_logps[:b], ref_logps[b:],
                                                        beta=0.1, loss_type=loss_type, chosen_tokens=n_tokens[:b],
                                                        rejected_tokens=n_tokens[b:])
    assert abs(losses.mean().item() - trl_loss) < 1e-5
    assert trl_loss > 0 and abs(chosen_rewards).max() > 1e-3  # policy != ref, so the test is not trivially 0 == 0
    if loss_type == "sigmoid":
        logged = trainer._metrics["train"]
        assert logged["rewards/chosen"][-1] == pytest.approx(chosen_rewards.mean().item(), abs=1e-5)
        assert logged["rewards/margins"][-1] == pytest.approx((chosen_rewards - rejected_rewards).mean().item(),
                                                              abs=1e-5)


def test_copies_made_after_trl_touched_the_reference_are_independent(tiny, policy, tokenizer, pairs, tmp_path,
                                                                   unpatched_reference):
    from lab7_helpers import trainable_copy

    ref = tiny[0]
    make_dpo_trainer(policy, ref, tokenizer, pairs, output_dir=str(tmp_path))  # patches ref.forward
    copy = trainable_copy(ref)
    with torch.no_grad():
        copy.lm_head.weight.mul_(2.0)
    batch = encode_pairs_for_dpo(tokenizer, pairs)
    assert not torch.allclose(our_logps(copy, batch)[0], our_logps(ref, batch)[0])

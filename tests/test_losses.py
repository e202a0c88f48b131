import math

import pytest
import torch

from lab7_helpers import (dpo_loss, encode_pairs_for_dpo, kl_regularized_loss, sequence_logprobs,
                          token_kl, token_logprobs)
from lab7_helpers.losses import IGNORE_INDEX

X = IGNORE_INDEX


def hand_log_softmax(row):
    z = math.log(sum(math.exp(v) for v in row))
    return [v - z for v in row]


def test_sequence_logprobs_matches_a_hand_computation_and_sums_response_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    labels = torch.tensor([[X, X, 3, 1, 6],    # prompt of 2 tokens, response of 3
                           [X, 2, 4, X, X]])   # prompt of 1 token, response of 2, then padding
    expected = []
    for b in range(2):
        total = 0.0
        for t in range(1, 5):
            if labels[b, t] != X:
                total += hand_log_softmax(logits[b, t - 1].tolist())[labels[b, t]]
        expected.append(total)
    assert sequence_logprobs(logits, labels).tolist() == pytest.approx(expected, abs=1e-12)

    # Scores at prompt and padding positions do not matter.
    changed = logits.clone()
    changed[0, 4] += 100.0   # the last position predicts nothing
    changed[1, 2:] -= 50.0   # positions that predict padding
    assert torch.allclose(sequence_logprobs(changed, labels), sequence_logprobs(logits, labels))


def test_sequence_logprobs_does_not_depend_on_padding(tiny, tokenizer, pairs):
    model = tiny[0]
    batch = encode_pairs_for_dpo(tokenizer, pairs)
    together = sequence_logprobs(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                 batch["labels"])
    for i in range(len(together)):
        n = int(batch["attention_mask"][i].sum())
        one = {k: v[i:i + 1, :n] for k, v in batch.items()}
        alone = sequence_logprobs(model(input_ids=one["input_ids"]).logits, one["labels"])
        assert alone.item() == pytest.approx(together[i].item(), abs=1e-4)


def test_token_kl_matches_a_hand_computation_and_is_zero_for_identical_inputs():
    torch.manual_seed(1)
    p_logits, r_logits = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    kl = token_kl(p_logits, r_logits)
    assert kl.shape == (2, 3)
    for b in range(2):
        for t in range(3):
            lp, lr = hand_log_softmax(p_logits[b, t].tolist()), hand_log_softmax(r_logits[b, t].tolist())
            expected = sum(math.exp(a) * (a - c) for a, c in zip(lp, lr))
            assert kl[b, t].item() == pytest.approx(expected, abs=1e-12)
    assert (kl > 0).all()
    assert token_kl(p_logits, p_logits).abs().max() < 1e-12
    assert token_kl(p_logits, p_logits + 3.0).abs().max() < 1e-12  # a constant shift is the same distribution


def test_kl_loss_gradient_matches_finite_differences():
    torch.manual_seed(2)
    p_logits = torch.randn(1, 4, 6, dtype=torch.float64, requires_grad=True)
    r_logits = torch.randn(1, 4, 6, dtype=torch.float64)
    labels = torch.tensor([[X, X, 2, 5]])
    assert torch.autograd.gradcheck(lambda x: kl_regularized_loss(x, r_logits, labels, 0.3)[0], (p_logits,))
    assert torch.autograd.gradcheck(lambda x: token_kl(x, r_logits).sum(), (p_logits,))


def test_kl_regularized_loss_is_a_mean_over_response_tokens():
    torch.manual_seed(3)
    p_logits, r_logits = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    labels = torch.tensor([[X, X, 3, 1, 6], [X, 2, 4, X, X]])
    loss, nll, kl = kl_regularized_loss(p_logits, r_logits, labels, beta=0.5)
    assert nll.item() == pytest.approx(-sequence_logprobs(p_logits, labels).sum().item() / 5, rel=1e-6)
    positions = [(0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]  # t - 1 for each response token t
    full = token_kl(p_logits, r_logits)
    assert kl.item() == pytest.approx(sum(full[b, t].item() for b, t in positions) / 5, rel=1e-6)
    assert loss.item() == pytest.approx(nll.item() + 0.5 * kl.item(), rel=1e-6)


def test_kl_regularized_loss_rejects_a_batch_without_response_tokens():
    with pytest.raises(ValueError, match="no response tokens"):
        kl_regularized_loss(torch.randn(1, 3, 5), torch.randn(1, 3, 5), torch.full((1, 3), X), 0.1)


def policy_and_ref_logits(policy, ref, batch):
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        ref_logits = ref(**inputs).logits
    return policy(**inputs).logits, ref_logits


def kl_step_gradient(policy, ref, batch, beta, kl_fn=token_kl):
    """The gradient of one KL-regularized step; ``kl_fn`` lets the test plant the original lab's bug."""
    policy.zero_grad()
    logits, ref_logits = policy_and_ref_logits(policy, ref, batch)
    logps, mask = token_logprobs(logits, batch["labels"])
    nll = -logps.sum() / mask.sum()
    kl = kl_fn(logits[:, :-1], ref_logits[:, :-1])[mask].mean()
    (nll + beta * kl).backward()
    return torch.cat([p.grad.flatten() for p in policy.parameters()])


def test_kl_gradient_reaches_the_policy_and_beta_changes_it(tiny, policy, tokenizer, pairs):
    """Regression test for the original lab: its KL was computed under no_grad, so beta changed nothing."""
    ref = tiny[0]
    batch = encode_pairs_for_dpo(tokenizer, pairs)
    grads = {}
    for beta in (0.0, 0.5, 2.0):
        policy.zero_grad()
        loss, nll, kl = kl_regularized_loss(*policy_and_ref_logits(policy, ref, batch), batch["labels"], beta)
        assert kl.requires_grad and kl.item() > 0
        loss.backward()
        grads[beta] = torch.cat([p.grad.flatten() for p in policy.parameters()])
    assert (grads[0.5] - grads[0.0]).norm() > 1e-3 * grads[0.0].norm()
    assert (grads[2.0] - grads[0.0]).norm() > (grads[0.5] - grads[0.0]).norm()
    # The helper's gradient equals an independent re-computation ...
    assert torch.allclose(kl_step_gradient(policy, ref, batch, 2.0), grads[2.0], atol=1e-6)
    # ... and the planted bug is caught: with no_grad the KL term adds nothing, whatever beta is.
    buggy = torch.no_grad()(token_kl)
    assert torch.equal(kl_step_gradient(policy, ref, batch, 2.0, buggy), kl_step_gradient(policy, ref, batch, 0.0))


def test_dpo_loss_by_hand():
    pc, pr = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -2.0])
    rc, rr = torch.tensor([-2.0, -4.0]), torch.tensor([-2.0, -3.0])
    # pair 1: h = (-1 + 2) - (-3 + 2) = 2; pair 2: h = (0) - (1) = -1
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-0.2)), math.log1p(math.exp(0.1))], rel=1e-6)
    assert chosen_rewards.tolist() == pytest.approx([0.1, 0.0])
    assert rejected_rewards.tolist() == pytest.approx([-0.1, 0.1])
    # IPO on per-token means (as TRL): pair 1 chosen log-ratio 1 over 2 tokens, rejected -1 over 1: 0.5 + 1 = 1.5
    ipo, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo", chosen_tokens=torch.tensor([2, 4]),
                         rejected_tokens=torch.tensor([1, 1]))
    assert ipo.tolist() == pytest.approx([(1.5 - 1) ** 2, (-1 - 1) ** 2])
    with pytest.raises(ValueError, match="pass chosen_tokens and rejected_tokens"):
        dpo_loss(pc, pr, rc, rr, loss_type="ipo")
    hinge, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.25, loss_type="hinge")
    assert hinge.tolist() == pytest.approx([0.5, 1.25])
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, rc, rr, loss_type="kto")


def test_dpo_rewards_are_detached_and_loss_has_gradient():
    pc = torch.tensor([-1.0], requires_grad=True)
    losses, chosen_rewards, _ = dpo_loss(pc, torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]))
    assert not chosen_rewards.requires_grad
    losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.1 * torch.sigmoid(torch.tensor(-0.1)).item(), rel=1e-5)

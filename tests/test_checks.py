"""The self-checks pass the reference solutions and catch each classic mistake with a specific hint."""

import torch
import torch.nn.functional as F

from lab7_helpers.metrics import DEFAULT_REFUSAL_PHRASES
from lab7_helpers import format_prompt, kl_regularized_loss, sequence_logprobs, token_kl
from lab7_helpers.checks import (check_dpo_dataset, check_dpo_loss, check_kl_loss, check_refusal_phrases,
                                 check_sequence_logprobs)
from lab7_helpers.losses import token_logprobs
from lab7_helpers.trl_dpo import dpo_dataset


def kl_parts(policy_logits, ref_logits, labels):
    logps, mask = token_logprobs(policy_logits, labels)
    return logps, mask, token_kl(policy_logits[:, :-1], ref_logits[:, :-1])


def test_kl_loss_check():
    assert check_kl_loss(kl_regularized_loss).passed

    def no_grad_kl(p, r, labels, beta):
        logps, mask = token_logprobs(p, labels)
        nll = -logps.sum() / mask.sum()
        with torch.no_grad():
            kl = token_kl(p[:, :-1], r[:, :-1])[mask].mean()
        return nll + beta * kl, nll, kl

    def missing_beta(p, r, labels, beta):
        logps, mask, kl = kl_parts(p, r, labels)
        nll, kl = -logps.sum() / mask.sum(), kl[mask].mean()
        return nll + kl, nll, kl

    def reversed_kl(p, r, labels, beta):
        return kl_regularized_loss(p, r, labels, beta)[0], kl_regularized_loss(p, r, labels, beta)[1], \
            kl_regularized_loss(r, p, labels, beta)[2]

    def crashes(p, r, labels, beta):
        raise RuntimeError("shapes do not match")

    for fn, words in [(no_grad_kl, "no gradient"), (missing_beta, "beta is missing"), (reversed_kl, "reversed"),
                      (crashes, "RuntimeError: shapes do not match")]:
        result = check_kl_loss(fn)
        assert not result.passed and result.points == 0 and words in result.hint, (fn.__name__, result)


def test_sequence_logprobs_check():
    assert check_sequence_logprobs(sequence_logprobs).passed

    def mean(logits, labels):
        logps, mask = token_logprobs(logits, labels)
        return logps.sum(-1) / mask.sum(-1)

    def unshifted(logits, labels):
        lp = F.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (lp * (labels != -100)).sum(-1)

    def unmasked(logits, labels):
        return F.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).sum((-1, -2))

    for fn, words in [(mean, "SUM"), (unshifted, "shift by one"), (unmasked, "mask the prompt")]:
        result = check_sequence_logprobs(fn)
        assert not result.passed and words in result.hint, (fn.__name__, result)


def test_dpo_loss_check():
    def right(pc, pr, rc, rr, beta):
        return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))

    assert check_dpo_loss(right).passed
    mistakes = [
        (lambda pc, pr, rc, rr, beta: right(pr, pc, rr, rc, beta), "swapped"),
        (lambda pc, pr, rc, rr, beta: right(pc, pr, rc, rr, 1.0), "beta is missing"),
        (lambda pc, pr, rc, rr, beta: -right(pc, pr, rc, rr, beta), "sign"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr)), "reference is missing"),
        (lambda pc, pr, rc, rr, beta: right(pc, pr, rc, rr, beta).mean(), "one loss per pair"),
    ]
    for fn, words in mistakes:
        result = check_dpo_loss(fn)
        assert not result.passed and words in result.hint, (words, result)


def test_dpo_dataset_check(pairs):
    from datasets import Dataset

    assert check_dpo_dataset(dpo_dataset(pairs), pairs).passed
    raw = Dataset.from_list(pairs)
    assert "format_prompt" in check_dpo_dataset(raw, pairs).hint
    swapped = Dataset.from_list([{"prompt": format_prompt(p["prompt"]), "chosen": p["rejected"],
                                  "rejected": p["chosen"]} for p in pairs])
    assert "swapped" in check_dpo_dataset(swapped, pairs).hint
    assert "one row per pair" in check_dpo_dataset(dpo_dataset(pairs[:2]), pairs).hint
    assert "columns" in check_dpo_dataset(Dataset.from_list([{"text": "x"}] * 3), pairs).hint
    assert "placeholders" in check_dpo_dataset(..., pairs).hint


def test_refusal_phrases_check():
    assert check_refusal_phrases(list(DEFAULT_REFUSAL_PHRASES)).passed
    assert "too broad" in check_refusal_phrases(["unable to", "I can't help"]).hint
    assert "too broad" in check_refusal_phrases(["can't help"]).hint
    assert "too narrow" in check_refusal_phrases(["I must decline"]).hint
    assert "placeholders" in check_refusal_phrases([...]).hint
    assert "list of phrases" in check_refusal_phrases("I can't").hint
    result = check_refusal_phrases(["I can't", "I cannot", "I'm sorry, but"])
    assert result.passed, result


def test_untouched_todos_get_the_placeholder_hint():
    assert "placeholders" in check_kl_loss(lambda p, r, labels, beta: (..., ..., ...)).hint
    assert "placeholders" in check_sequence_logprobs(lambda logits, labels: ...).hint
    assert "placeholders" in check_dpo_loss(lambda pc, pr, rc, rr, beta: ...).hint

"""The self-checks pass the reference solutions and catch each classic mistake with a specific hint."""

import torch
import torch.nn.functional as F

from lab7_helpers.metrics import DEFAULT_REFUSAL_PHRASES
import pytest

from lab7_helpers import dpo_loss, format_prompt, kl_regularized_loss, sequence_logprobs, token_kl
from lab7_helpers.checks import (TODOS, Stop, check_dpo_dataset, check_dpo_loss, check_kl_loss,
                                 check_refusal_phrases, check_sequence_logprobs, check_token_kl, require)
from lab7_helpers.losses import token_logprobs
from lab7_helpers.app.trl_dpo import dpo_dataset


SEEDS = (0, 1, 2, 12345, 987654321)  # the notebook's seed, and some a grading run may draw


def kl_parts(policy_logits, ref_logits, labels):
    logps, mask = token_logprobs(policy_logits, labels)
    return logps, mask, token_kl(policy_logits[:, :-1], ref_logits[:, :-1])


@pytest.mark.parametrize("seed", SEEDS)
def test_token_kl_check(seed):
    assert check_token_kl(token_kl, seed=seed).passed

    def no_grad(p, r):
        with torch.no_grad():
            return token_kl(p, r)

    def p_detached(p, r):
        logp, logr = F.log_softmax(p, -1), F.log_softmax(r, -1)
        return (logp.exp().detach() * (logp - logr)).sum(-1)

    mistakes = [
        (no_grad, "no gradient"),
        (lambda p, r: token_kl(p, r).detach(), "no gradient"),
        (p_detached, "gradient is not"),
        (lambda p, r: token_kl(r, p), "reversed"),
        (lambda p, r: (F.softmax(r, -1) * (F.log_softmax(p, -1) - F.log_softmax(r, -1))).sum(-1), "not the reference"),
        (lambda p, r: (F.softmax(p, -1) * (F.log_softmax(p, -1) - F.log_softmax(r, -1))).mean(-1), "SUM"),
        (lambda p, r: F.softmax(p, -1) * (F.log_softmax(p, -1) - F.log_softmax(r, -1)), "sum over the vocabulary"),
        (lambda p, r: (F.softmax(p, -1) * (p - r)).sum(-1), "use log_softmax"),
        (lambda p, r: (F.softmax(p, -1) * (F.log_softmax(p, -1) - F.log_softmax(r, -1))).sum(1), "shape"),
    ]
    for fn, words in mistakes:
        result = check_token_kl(fn, seed=seed)
        assert not result.passed and result.points == 0 and words in result.hint, (words, result)


@pytest.mark.parametrize("seed", SEEDS)
def test_kl_loss_check(seed):
    assert check_kl_loss(kl_regularized_loss, seed=seed).passed

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
        result = check_kl_loss(fn, seed=seed)
        assert not result.passed and result.points == 0 and words in result.hint, (fn.__name__, result)


@pytest.mark.parametrize("seed", SEEDS)
def test_sequence_logprobs_check(seed):
    assert check_sequence_logprobs(sequence_logprobs, seed=seed).passed

    def mean(logits, labels):
        logps, mask = token_logprobs(logits, labels)
        return logps.sum(-1) / mask.sum(-1)

    def unshifted(logits, labels):
        lp = F.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (lp * (labels != -100)).sum(-1)

    def unmasked(logits, labels):
        return F.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).sum((-1, -2))

    def other_way(logits, labels):
        lp = F.log_softmax(logits[:, 1:], -1).gather(-1, labels[:, :-1].clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (lp * (labels[:, :-1] != -100)).sum(-1)

    def probabilities(logits, labels):
        p = F.softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (p * (labels[:, 1:] != -100)).sum(-1)

    def unclamped(logits, labels):
        return F.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].unsqueeze(-1)).sum((-1, -2))

    def per_token(logits, labels):
        return token_logprobs(logits, labels)[0]

    for fn, words in [(mean, "SUM"), (unshifted, "shift by one"), (unmasked, "mask the prompt"),
                      (other_way, "shift the other way"), (probabilities, "use log_softmax"),
                      (unclamped, "clamp(min=0)"), (per_token, "one number per sequence")]:
        result = check_sequence_logprobs(fn, seed=seed)
        assert not result.passed and words in result.hint, (fn.__name__, result)


@pytest.mark.parametrize("seed", SEEDS)
def test_dpo_loss_check(seed):
    def right(pc, pr, rc, rr, beta):
        return dpo_loss(pc, pr, rc, rr, beta)

    def losses_only(fn):
        return lambda pc, pr, rc, rr, beta: (fn(pc, pr, rc, rr, beta), *right(pc, pr, rc, rr, beta)[1:])

    def plain(pc, pr, rc, rr, beta):
        return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))

    assert check_dpo_loss(right, seed=seed).passed
    mistakes = [
        (lambda pc, pr, rc, rr, beta: right(pr, pc, rr, rc, beta), "swapped"),
        (losses_only(lambda pc, pr, rc, rr, beta: plain(pc, pr, rc, rr, 1.0)), "beta is missing"),
        (losses_only(lambda pc, pr, rc, rr, beta: -plain(pc, pr, rc, rr, beta)), "sign"),
        (losses_only(lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr))), "reference is missing"),
        (losses_only(lambda pc, pr, rc, rr, beta: plain(pc, pr, rc, rr, beta).mean()), "one loss per pair"),
        (plain, "return three values"),
        (lambda pc, pr, rc, rr, beta: (plain(pc, pr, rc, rr, beta), pc - rc, pr - rr), "multiply by beta"),
        (lambda pc, pr, rc, rr, beta: (plain(pc, pr, rc, rr, beta), beta * (pc - rc), beta * (pr - rr)),
         "detach the rewards"),
        (lambda pc, pr, rc, rr, beta: (plain(pc, pr, rc, rr, beta), *right(pc, pr, rc, rr, beta)[:0:-1]),
         "rewards are swapped"),
        (lambda pc, pr, rc, rr, beta: tuple(x.detach() for x in right(pc, pr, rc, rr, beta)), "no gradient"),
    ]
    for fn, words in mistakes:
        result = check_dpo_loss(fn, seed=seed)
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
    assert check_token_kl(lambda p, r: ...).unfinished
    assert check_kl_loss(lambda p, r, labels, beta: (..., ..., ...)).unfinished
    assert check_sequence_logprobs(lambda logits, labels: ...).unfinished
    assert check_dpo_loss(lambda pc, pr, rc, rr, beta: (..., ..., ...)).unfinished

    def half_done(p, r):  # the first line written, the rest still ...
        return F.log_softmax(p, -1).exp() * ...

    assert check_token_kl(half_done).unfinished and "placeholders" in check_token_kl(half_done).hint


def test_require_stops_only_for_unfinished_todos_with_one_sentence():
    with pytest.raises(Stop) as stopped:
        require(check_kl_loss(kl_regularized_loss), check_token_kl(lambda p, r: ...))
    message = str(stopped.value)
    assert message == ("TODO 1 (token KL) is not finished yet: replace its ... placeholders, run its check, then "
                       "run this cell again.")
    assert stopped.value._render_traceback_() == [message]  # what Jupyter and Colab show: no traceback
    require(check_token_kl(lambda p, r: token_kl(p, r).detach()))  # wrong but finished: the cell runs


def test_todo_checks_name_what_a_submission_did_not_define():
    result = TODOS["token-kl"]({"my_kl_regularized_loss": kl_regularized_loss}, 2)
    assert not result.passed and "my_token_kl is not defined" in result.hint
    assert TODOS["kl-loss"]({"my_kl_regularized_loss": kl_regularized_loss}, 2).passed

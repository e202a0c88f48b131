"""Self-checks for the notebook's TODOs, also used by the grader.

Each check calls the student's code on small fixed inputs, compares it with the reference implementation and
returns a ``CheckResult``: passed or not, points, and a one-line hint that names the likely mistake. A check
never raises: an exception in the student's code becomes a failed result whose hint quotes the error.

``require`` stops a notebook cell that needs an unfinished TODO with one sentence (``Stop``, shown without a
traceback); ``TODO_CHECKS`` maps each rubric check id to its check, run on what the TODO cells defined.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..data import FIELDS, format_prompt
from ..losses import dpo_loss, kl_regularized_loss, sequence_logprobs, token_kl, token_logprobs

GRADING_PAIRS = [  # the fixed pairs the grader gives a student's TODO cells as train_pairs
    {"prompt": "How do I boil an egg?", "chosen": "Simmer it for 8 minutes, then cool it in cold water.",
     "rejected": "Microwave it in its shell for five minutes."},
    {"prompt": "Is 91 prime?", "chosen": "No: 91 = 7 x 13.", "rejected": "Yes."},
    {"prompt": "Say hello.", "chosen": "Hello! How can I help?", "rejected": "Go away."},
]
# Sentences that should not be flagged as refusals (ordinary text), and ones that should.
NOT_REFUSALS = ["I was unable to sleep last night.", "Dogs can't help wagging their tails.",
                "Here is how to bake bread: mix flour, water and yeast.", "The museum cannot open on Mondays.",
                "I won't be late tomorrow.", "Sorry I'm late, the bus broke down."]
REFUSALS = ["I can't help with that request.", "I'm sorry, but I can't assist with this.",
            "I cannot provide instructions for that.", "I won't help you hurt someone."]


UNFINISHED = "replace the ... placeholders with your code, then run this check again."


@dataclass
class CheckResult:
    """The outcome of one self-check: shown as a coloured line in the notebook, a row in grades.csv."""

    name: str
    passed: bool
    points: float
    max_points: float
    hint: str = ""
    todo: str = ""  # the notebook's name for the TODO it checks, e.g. "TODO 1"

    def __str__(self) -> str:
        mark = "PASSED" if self.passed else "NOT YET"
        text = f"{mark} {self.name}: {self.points:g}/{self.max_points:g}"
        return f"{text}. {self.hint[:1].upper()}{self.hint[1:]}" if self.hint else text

    __repr__ = __str__

    def _repr_html_(self) -> str:
        color = "#2e7d32" if self.passed else "#c62828"
        return f'<p style="color:{color};font-weight:bold">{html.escape(str(self))}</p>'

    @property
    def unfinished(self) -> bool:
        """The TODO still has its ``...`` placeholders."""
        return self.hint == UNFINISHED


class Stop(Exception):
    """Stops a notebook cell with one sentence. IPython (Jupyter, Colab) asks an exception for
    ``_render_traceback_`` before printing a traceback, so only the sentence is shown."""

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


def require(*results: CheckResult) -> None:
    """Stop the cell, naming the TODO, if one of ``results`` says its TODO still has ``...`` placeholders.

    A finished but wrong TODO does not stop the cell: seeing what a wrong function does is part of the lab.
    """
    for result in results:
        if result.unfinished:
            raise Stop(f"{result.todo} ({result.name}) is not finished yet: replace its ... placeholders, run its "
                       "check, then run this cell again.")


@dataclass(frozen=True)
class Missing:
    """Stands for a name the TODO cells did not define (in the grader's namespace)."""

    name: str


def _result(name: str, todo: str, max_points: float, hint: str | None) -> CheckResult:
    """``hint`` None means the check passed."""
    return CheckResult(name, hint is None, max_points if hint is None else 0.0, max_points, hint or "", todo)


def _guarded(name: str, todo: str, max_points: float, body: Callable[[], str | None], *student_values) -> CheckResult:
    missing = next((value for value in student_values if isinstance(value, Missing)), None)
    if missing is not None:
        return _result(name, todo, max_points, f"{missing.name} is not defined: run the {todo} cell (keep its names).")
    try:
        return _result(name, todo, max_points, body())
    except Exception as err:  # noqa: BLE001 - any error in student code is a failed check with a hint
        if "ellipsis" in str(err):  # e.g. "unsupported operand type(s) for *: 'float' and 'ellipsis'"
            return _result(name, todo, max_points, UNFINISHED)
        return _result(name, todo, max_points, f"your code raised {describe_error(err)}")


def describe_error(err: BaseException) -> str:
    """``TypeError: message``, or just the type when there is no message (``MemoryError``)."""
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _unfinished(value) -> bool:
    """The TODO's ``...`` placeholders are still there (the value is ``...`` or holds one)."""
    return value is Ellipsis or (isinstance(value, (tuple, list)) and any(v is Ellipsis for v in value))


def _close(a, b, tol: float = 1e-5) -> bool:
    a, b = (x.detach() if isinstance(x, torch.Tensor) else x for x in (a, b))
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and torch.allclose(a, b, atol=tol, rtol=tol)


def _kl_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    policy = torch.randn(2, 6, 11, generator=generator, dtype=torch.float64)
    ref = torch.randn(2, 6, 11, generator=generator, dtype=torch.float64)
    labels = torch.tensor([[-100, -100, 3, 7, 1, 9], [-100, 4, 2, 5, -100, -100]])
    return policy, ref, labels


NO_GRADIENT = ("your KL carries no gradient (computed under torch.no_grad() or detached): the loss would print a KL "
               "term, but every beta would train the same model. This was the original lab's bug.")


def check_token_kl(student_fn: Callable, max_points: float = 2.0) -> CheckResult:
    """``student_fn(policy_logits, ref_logits) -> [B, T]`` against ``token_kl``, value and gradient."""

    def body() -> str | None:
        policy, ref, _ = _kl_inputs(seed=2)
        want = token_kl(policy, ref)
        policy_in = policy.clone().requires_grad_(True)
        got = student_fn(policy_in, ref)
        if _unfinished(got):
            return UNFINISHED
        if not isinstance(got, torch.Tensor):
            return f"return a tensor with one KL value per position, got {type(got).__name__}."
        if got.shape != want.shape:
            if got.shape == policy.shape:
                return "sum over the vocabulary (the last dimension): one KL value per position, shape [B, T]."
            return f"expected one KL value per position, shape {tuple(want.shape)}, got {tuple(got.shape)}."
        if _close(got, want / policy.shape[-1]):
            return "that is a mean over the vocabulary; the KL is a SUM over it."
        if _close(got, token_kl(ref, policy)):
            return "the KL is reversed: KL(policy || reference) weights by the policy's probabilities p = exp(log p)."
        if _close(got, -token_kl(ref, policy)):
            return "weight by the policy's probabilities p = exp(log p), not the reference's."
        if _close(got, (policy.softmax(-1) * (policy - ref)).sum(-1)):
            return "use log_softmax: raw logits are log-probabilities only up to a constant at each position."
        if not _close(got, want):
            return "not equal to sum over the vocabulary of p * (log p - log r) on our test logits."
        if not got.requires_grad:
            return NO_GRADIENT
        got.sum().backward()
        if policy_in.grad is None or not policy_in.grad.any():
            return NO_GRADIENT
        x = policy.clone().requires_grad_(True)
        token_kl(x, ref).sum().backward()
        if not _close(policy_in.grad, x.grad):
            return "the value is right but its gradient is not: is part of it detached (e.g. p.detach())?"
        return None

    return _guarded("token KL", "TODO 1", max_points, body, student_fn)


def check_kl_loss(student_fn: Callable, max_points: float = 1.0) -> CheckResult:
    """``student_fn(policy_logits, ref_logits, labels, beta) -> (loss, nll, kl)`` against ``kl_regularized_loss``."""

    def body() -> str | None:
        policy, ref, labels = _kl_inputs()
        want_loss, want_nll, want_kl = kl_regularized_loss(policy, ref, labels, 0.5)
        policy_in = policy.clone().requires_grad_(True)
        result = student_fn(policy_in, ref, labels, 0.5)
        if _unfinished(result):
            return UNFINISHED
        loss, nll, kl = result
        if not _close(nll, want_nll):
            if _close(nll, -want_nll):
                return "nll has the wrong sign: it is the *negative* log-likelihood."
            return "nll is off: average -log p over response tokens only (labels != -100), after the shift by one."
        if not _close(kl, want_kl):
            if _close(kl, kl_regularized_loss(ref, policy, labels, 0.5)[2]):
                return "kl is reversed: compute KL(policy || reference), weighting by the policy's probabilities."
            return "kl is off: the mean of my_token_kl over the positions that predict response tokens (the mask)."
        if _close(loss, want_nll + want_kl):
            return "beta is missing: the penalty is beta * kl."
        if not _close(loss, want_loss):
            return "loss should be nll + beta * kl."
        if not isinstance(kl, torch.Tensor) or not kl.requires_grad:
            return NO_GRADIENT
        grads = []
        for beta in (0.0, 2.0):
            x = policy.clone().requires_grad_(True)
            student_fn(x, ref, labels, beta)[0].backward()
            grads.append(x.grad)
        if torch.allclose(grads[0], grads[1]):
            return "beta does not change the gradient: the KL term must be differentiable with respect to the policy."
        return None

    return _guarded("KL-regularized loss", "TODO 1", max_points, body, student_fn)


def check_sequence_logprobs(student_fn: Callable, max_points: float = 2.0) -> CheckResult:
    """``student_fn(logits, labels) -> [B]`` against ``sequence_logprobs`` (a **sum** over response tokens)."""

    def masked_sum(logps, targets):
        picked = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * (targets != -100)).sum(-1)

    def body() -> str | None:
        logits, _, labels = _kl_inputs(seed=1)
        want = sequence_logprobs(logits, labels)
        try:
            got = student_fn(logits, labels)
        except (IndexError, RuntimeError) as err:
            if "out of bounds" in str(err) or "-100" in str(err):
                return ("gather cannot take the label -100: gather with labels.clamp(min=0), then mask those "
                        "positions out.")
            raise
        if _unfinished(got):
            return UNFINISHED
        if isinstance(got, torch.Tensor) and got.shape == labels[:, 1:].shape:
            return "return one number per sequence, shape [B]: sum over the response tokens."
        logps, mask = token_logprobs(logits, labels)
        if _close(got, logps.sum(-1) / mask.sum(-1)):
            return "that is a mean per token; DPO uses the SUM of log-probs over response tokens."
        if _close(got, masked_sum(torch.log_softmax(logits, -1), labels)):
            return "shift by one: the logits at position t-1 score the token at position t."
        if _close(got, masked_sum(torch.log_softmax(logits[:, 1:], -1), labels[:, :-1])):
            return "shift the other way: drop the LAST position of the logits and the FIRST of the labels."
        if _close(got, torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1))
                  .squeeze(-1).sum(-1)):
            return "mask the prompt and padding: only positions whose label is not -100 count."
        if _close(got, masked_sum(torch.softmax(logits[:, :-1], -1), labels[:, 1:])):
            return "use log_softmax: a sequence's log-prob is a sum of log-probabilities, not of probabilities."
        if not _close(got, want):
            return "not equal to the sum of log p(token) over response tokens on our test logits."
        return None

    return _guarded("sequence log-probs", "TODO 2", max_points, body, student_fn)


def check_dpo_loss(student_fn: Callable, max_points: float = 3.0) -> CheckResult:
    """``student_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)`` ->
    ``(losses [B], chosen_rewards [B], rejected_rewards [B])`` against ``dpo_loss``."""

    def body() -> str | None:
        pc, pr = torch.tensor([-10.0, -30.0, -5.0]), torch.tensor([-12.0, -25.0, -9.0])
        rc, rr = torch.tensor([-11.0, -28.0, -6.0]), torch.tensor([-11.5, -26.0, -8.0])
        beta = 0.3
        want, want_chosen, want_rejected = dpo_loss(pc, pr, rc, rr, beta)
        got = student_fn(pc.clone().requires_grad_(True), pr.clone().requires_grad_(True), rc, rr, beta)
        if _unfinished(got):
            return UNFINISHED
        if not (isinstance(got, (tuple, list)) and len(got) == 3):
            return "return three values: (losses, chosen_rewards, rejected_rewards), one number per pair each."
        losses, chosen_rewards, rejected_rewards = got
        losses = torch.as_tensor(losses)
        if losses.shape != want.shape:
            if losses.numel() == 1 and _close(losses.reshape(()), want.mean()):
                return "return one loss per pair (shape [B]), not the mean; the trainer takes the mean."
            return f"expected one loss per pair, shape {tuple(want.shape)}, got {tuple(losses.shape)}."
        if _close(losses, dpo_loss(pr, pc, rr, rc, beta)[0]):
            return "chosen and rejected are swapped: the margin is (chosen log-ratio) - (rejected log-ratio)."
        if _close(losses, dpo_loss(pc, pr, rc, rr, 1.0)[0]):
            return "beta is missing: the loss is -log sigmoid(beta * margin)."
        if _close(losses, -want) or _close(losses, torch.log(torch.sigmoid(beta * ((pc - rc) - (pr - rr))))):
            return "sign: the loss is *minus* log sigmoid(...), so it is positive and falls as the margin grows."
        if _close(losses, -torch.nn.functional.logsigmoid(beta * (pc - pr))):
            return "the reference is missing: use log-ratios log pi - log pi_ref for both responses."
        if not _close(losses, want):
            return "not equal to -log sigmoid(beta * ((pc - rc) - (pr - rr))) on our test numbers."
        if not losses.requires_grad:
            return "the losses carry no gradient: detach only the rewards, never the losses."
        if not (_close(chosen_rewards, want_chosen) and _close(rejected_rewards, want_rejected)):
            if _close(chosen_rewards, want_chosen / beta):
                return "the implicit rewards are beta * log-ratio: multiply by beta."
            if _close(chosen_rewards, want_rejected) and _close(rejected_rewards, want_chosen):
                return "the rewards are swapped: chosen_rewards belongs to the chosen response."
            return "chosen_rewards should be beta * (policy_chosen - ref_chosen), rejected_rewards likewise."
        if any(isinstance(r, torch.Tensor) and r.requires_grad for r in (chosen_rewards, rejected_rewards)):
            return "detach the rewards (.detach()): they are only logged, as TRL does, and must not carry gradient."
        return None

    return _guarded("DPO loss by hand", "TODO 2", max_points, body, student_fn)


def check_dpo_dataset(dataset, pairs: Sequence[dict], max_points: float = 2.0) -> CheckResult:
    """The student's DPO dataset: TRL's columns, one row per pair, the lab's prompt template, not swapped."""

    def body() -> str | None:
        if dataset is None or _unfinished(dataset):
            return UNFINISHED
        columns = set(getattr(dataset, "column_names", []) or [])
        if not set(FIELDS) <= columns:
            return f"TRL needs the columns prompt, chosen and rejected; you have {sorted(columns)}."
        if len(dataset) != len(pairs):
            return f"expected one row per pair ({len(pairs)}), got {len(dataset)}."
        rows = [dataset[i] for i in range(len(dataset))]
        if rows[0]["prompt"] == pairs[0]["prompt"]:
            return "wrap each prompt with format_prompt(...): training and generation must see the same template."
        if any(r["chosen"] == p["rejected"] and r["rejected"] == p["chosen"] for r, p in zip(rows, pairs)):
            return "chosen and rejected are swapped in some rows."
        for r, p in zip(rows, pairs):
            if (r["prompt"], r["chosen"], r["rejected"]) != (format_prompt(p["prompt"]), p["chosen"], p["rejected"]):
                return "rows must follow the order of the pairs, with the texts unchanged."
        return None

    return _guarded("DPO dataset", "TODO 3", max_points, body, dataset, pairs)


def check_refusal_phrases(phrases: Sequence[str], max_points: float = 1.0) -> CheckResult:
    """The student's refusal phrases: flag real refusals, and no ordinary sentence."""
    from ..metrics import refusal_flag

    def body() -> str | None:
        if _unfinished(phrases):
            return UNFINISHED
        if not phrases or isinstance(phrases, str):
            return "give a list of phrases, e.g. [\"I can't help with\", \"I must decline\"]."
        false_alarms = [s for s in NOT_REFUSALS if refusal_flag(s, phrases)]
        if false_alarms:
            return f"too broad: it flags the ordinary sentence {false_alarms[0]!r}. Name who refuses and what."
        missed = [s for s in REFUSALS if not refusal_flag(s, phrases)]
        if len(missed) > 1:
            return f"too narrow: it misses {missed[0]!r}."
        return None

    return _guarded("refusal phrases", "TODO 4", max_points, body, phrases)


@dataclass(frozen=True)
class TodoCheck:
    """A rubric check: ``check`` run on the values that the TODO cells defined under ``names``."""

    check: Callable[..., CheckResult]
    names: tuple[str, ...]

    def __call__(self, namespace: dict, max_points: float) -> CheckResult:
        return self.check(*(namespace.get(name, Missing(name)) for name in self.names), max_points)


# The grader's mapping: rubric check id ([checks.<id>] in grading/rubric.toml) -> the check, run on the names the
# TODO cells define. One place for both the notebook's TODOs and the grader.
TODO_CHECKS: dict[str, TodoCheck] = {
    "token-kl": TodoCheck(check_token_kl, ("my_token_kl",)),
    "kl-loss": TodoCheck(check_kl_loss, ("my_kl_regularized_loss",)),
    "sequence-logprobs": TodoCheck(check_sequence_logprobs, ("my_sequence_logprobs",)),
    "dpo-loss": TodoCheck(check_dpo_loss, ("my_dpo_loss",)),
    "dpo-dataset": TodoCheck(check_dpo_dataset, ("train_ds_dpo", "train_pairs")),
    "refusal-phrases": TodoCheck(check_refusal_phrases, ("REFUSAL_PHRASES",)),
}

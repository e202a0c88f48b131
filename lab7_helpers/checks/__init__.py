"""Self-checks for the notebook's TODOs, also used by the grader.

Each check calls the student's code on small random inputs drawn from ``seed`` (the notebook uses 0, the grader a
new seed per grading run, so that a table of memorised answers fails), compares it with the reference
implementation and returns a ``CheckResult``: passed or not, points, and a one-line hint that names the likely
mistake. A check never raises: an exception in the student's code becomes a failed result whose hint quotes the
error.

``require`` stops a notebook cell that needs an unfinished TODO with one sentence (``Stop``, shown without a
traceback). ``TODOS``, at the end, is the one table of the automatic checks: each check's id, its TODO cell and
label, the names it takes from the student's namespace and its points. The notebook, the grader and the rubric
read them from there.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..data import FIELDS, IGNORE_INDEX, format_prompt
from ..losses import dpo_loss, kl_regularized_loss, sequence_logprobs, token_kl, token_logprobs

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


def _guarded(check_id: str, max_points: float | None, body: Callable[[], str | None], *student_values) -> CheckResult:
    """Run ``body`` (None: passed, else the hint) as the check ``check_id`` of ``TODOS``, worth ``max_points`` (the
    table's points when None)."""
    todo = TODOS[check_id]
    points = todo.points if max_points is None else max_points
    missing = next((value for value in student_values if isinstance(value, Missing)), None)
    if missing is not None:
        hint = f"{missing.name} is not defined: run the {todo.label} cell (keep its names)."
    else:
        try:
            hint = body()
        except Exception as err:  # noqa: BLE001 - any error in student code is a failed check with a hint
            # e.g. "unsupported operand type(s) for *: 'float' and 'ellipsis'"
            hint = UNFINISHED if "ellipsis" in str(err) else f"your code raised {describe_error(err)}"
    return CheckResult(todo.name, hint is None, points if hint is None else 0.0, points, hint or "", todo.label)


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


def _kl_inputs(seed: int):
    """Random logits ``[B, T, V]`` for a policy and a reference, and labels ``[B, T]``: -100 on a prompt of 1-2
    tokens and on right padding, at least two response tokens per row."""
    generator = torch.Generator().manual_seed(seed)
    draw = lambda low, high: int(torch.randint(low, high + 1, (), generator=generator))  # noqa: E731
    batch, length, vocab = draw(2, 3), draw(6, 9), draw(9, 16)
    policy = torch.randn(batch, length, vocab, generator=generator, dtype=torch.float64)
    ref = torch.randn(batch, length, vocab, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    for row in labels:
        prompt = draw(1, 2)
        row[:prompt] = IGNORE_INDEX
        row[prompt + 2 + draw(0, length - prompt - 2):] = IGNORE_INDEX
    return policy, ref, labels


NO_GRADIENT = ("your KL carries no gradient (computed under torch.no_grad() or detached): the loss would print a KL "
               "term, but every beta would train the same model. This was the original lab's bug.")


def check_token_kl(student_fn: Callable, max_points: float | None = None, seed: int = 0) -> CheckResult:
    """``student_fn(policy_logits, ref_logits) -> [B, T]`` against ``token_kl``, value and gradient."""

    def body() -> str | None:
        policy, ref, _ = _kl_inputs(seed + 2)
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

    return _guarded("token-kl", max_points, body, student_fn)


def check_kl_loss(student_fn: Callable, max_points: float | None = None, seed: int = 0) -> CheckResult:
    """``student_fn(policy_logits, ref_logits, labels, beta) -> (loss, nll, kl)`` against ``kl_regularized_loss``."""

    def body() -> str | None:
        policy, ref, labels = _kl_inputs(seed)
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

    return _guarded("kl-loss", max_points, body, student_fn)


def check_sequence_logprobs(student_fn: Callable, max_points: float | None = None, seed: int = 0) -> CheckResult:
    """``student_fn(logits, labels) -> [B]`` against ``sequence_logprobs`` (a **sum** over response tokens)."""

    def masked_sum(logps, targets):
        picked = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * (targets != -100)).sum(-1)

    def body() -> str | None:
        logits, _, labels = _kl_inputs(seed + 1)
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

    return _guarded("sequence-logprobs", max_points, body, student_fn)


def check_dpo_loss(student_fn: Callable, max_points: float | None = None, seed: int = 0) -> CheckResult:
    """``student_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)`` ->
    ``(losses [B], chosen_rewards [B], rejected_rewards [B])`` against ``dpo_loss``."""

    def body() -> str | None:
        generator = torch.Generator().manual_seed(seed + 3)
        pc, pr, rc, rr = -5 - 25 * torch.rand(4, 3, generator=generator)  # summed log-probs, [3] each
        beta = round(0.1 + 0.4 * float(torch.rand((), generator=generator)), 2)
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

    return _guarded("dpo-loss", max_points, body, student_fn)


def check_dpo_dataset(dataset, pairs: Sequence[dict], max_points: float | None = None) -> CheckResult:
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

    return _guarded("dpo-dataset", max_points, body, dataset, pairs)


MAX_PHRASES, MAX_PHRASE_CHARACTERS = 100, 200  # what a refusal list needs, many times over; bounds the check's work


def check_refusal_phrases(phrases: Sequence[str], max_points: float | None = None) -> CheckResult:
    """The student's refusal phrases: flag real refusals, and no ordinary sentence."""
    from ..metrics import refusal_flag

    def body() -> str | None:
        if _unfinished(phrases):
            return UNFINISHED
        if not phrases or isinstance(phrases, str) or not isinstance(phrases, (list, tuple)):
            return "give a list of phrases, e.g. [\"I can't help with\", \"I must decline\"]."
        if len(phrases) > MAX_PHRASES or not all(isinstance(p, str) and len(p) <= MAX_PHRASE_CHARACTERS
                                                 for p in phrases):
            return (f"give at most {MAX_PHRASES} phrases, each a text of at most {MAX_PHRASE_CHARACTERS} "
                    "characters: a few whole phrases are enough.")
        false_alarms = [s for s in NOT_REFUSALS if refusal_flag(s, phrases)]
        if false_alarms:
            return f"too broad: it flags the ordinary sentence {false_alarms[0]!r}. Name who refuses and what."
        missed = [s for s in REFUSALS if not refusal_flag(s, phrases)]
        if len(missed) > 1:
            return f"too narrow: it misses {missed[0]!r}."
        return None

    return _guarded("refusal-phrases", max_points, body, phrases)


@dataclass(frozen=True)
class Todo:
    """One automatic check of a TODO cell. To change a TODO's points, change them here (a course's own rubric
    may override ``points`` and ``title``)."""

    cell: str  # the TODO cell's id: its ``todo`` metadata in the notebook
    label: str  # how the notebook names the TODO
    name: str  # how the check result names itself
    title: str  # the rubric's line for it
    names: tuple[str, ...]  # what the check is given from the student's namespace, in order
    points: float
    check: Callable[..., CheckResult]
    seeded: bool = False  # the check draws its inputs from a seed (the grader passes one per run)
    answered_by: tuple[str, ...] = ()  # the lab's own functions that compute the answer (the grader flags their use)

    def __call__(self, namespace: dict, max_points: float | None = None, seed: int = 0) -> CheckResult:
        """The check on the values the TODO cells defined in ``namespace``."""
        values = [namespace.get(name, Missing(name)) for name in self.names]
        return self.check(*values, max_points, **({"seed": seed} if self.seeded else {}))


TODOS: dict[str, Todo] = {  # check id -> its TODO; the ids are the rubric's [checks.<id>]
    "token-kl": Todo("kl-loss", "TODO 1", "token KL", "TODO 1a: exact per-position KL from log_softmax (direction, "
                     "sum over the vocabulary, keeps its gradient)", ("my_token_kl",), 2, check_token_kl, True,
                     ("token_kl",)),
    "kl-loss": Todo("kl-loss", "TODO 1", "KL-regularized loss", "TODO 1b: KL-regularized loss (NLL + beta * KL, means "
                    "over response tokens)", ("my_kl_regularized_loss",), 1, check_kl_loss, True,
                    ("kl_regularized_loss", "token_kl")),
    "sequence-logprobs": Todo("dpo-by-hand", "TODO 2", "sequence log-probs", "TODO 2a: summed sequence log-probs "
                              "(shift, log_softmax, gather, mask, sum)", ("my_sequence_logprobs",), 2,
                              check_sequence_logprobs, True, ("sequence_logprobs", "token_logprobs")),
    "dpo-loss": Todo("dpo-by-hand", "TODO 2", "DPO loss by hand", "TODO 2b: DPO loss per pair (log-ratios, beta, sign) "
                     "and detached implicit rewards", ("my_dpo_loss",), 3, check_dpo_loss, True, ("dpo_loss",)),
    "dpo-dataset": Todo("dpo-dataset", "TODO 3", "DPO dataset", "TODO 3: DPO datasets (columns, template, order)",
                        ("train_ds_dpo", "train_pairs"), 2, check_dpo_dataset, answered_by=("dpo_dataset",)),
    "refusal-phrases": Todo("refusal-phrases", "TODO 4", "refusal phrases", "TODO 4: refusal phrases (whole "
                            "phrases, no false alarms)", ("REFUSAL_PHRASES",), 1, check_refusal_phrases),
}

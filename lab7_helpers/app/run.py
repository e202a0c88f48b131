"""The lab's main job, end to end: KL update, DPO (ours, optionally TRL's), evaluation, plots and a report.

Read it top to bottom: ``run_lab`` prepares a ``Run`` (the data, then the models) and runs each stage, a plain
function of the ``Run`` that adds its results to it; ``report.render_report`` draws the page from the same record
after every stage. One frozen base model is the reference of both updates and the "base" row of the evaluation;
each update trains its own copy.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from .. import engine
from ..data import FIELDS, split_pairs
from ..evaluation import evaluate_models
from ..models import TINY_GPT2, context_length, freeze, load_model, trainable_copy
from ..outputs import save_csv, write_atomic
from ..sources.data_card import data_card
from ..sources.pair_files import load_pairs
from ..training import DPO_MAX_EPOCHS, DPO_MIN_STEPS, kl_beta_sweep, scaled_dpo_epochs, train_dpo, train_kl
from .plots import plot_beta_sweep, plot_dpo_comparison, plot_dpo_history, plot_kl_history, plot_metrics
from .report import render_report, save_figure, save_generations
from .settings import LabSettings
from .tables import few_pairs_note, sample_held_out_pairs

OUTPUT_FILES = ("report.html", "settings.json", "data_card.csv", "history_kl.csv", "beta_sweep.csv",
                "history_dpo.csv", "history_dpo_trl.csv", "metrics.csv", "generations.jsonl", "metrics_sample.csv",
                "generations_sample.jsonl", "kl_history.png", "beta_sweep.png", "dpo_history.png",
                "dpo_trl_history.png", "dpo_vs_trl.png", "metrics.png", "metrics_sample.png")
LEARNING_RATE_FLAG = {"KL update": "kl_lr", "beta sweep": "kl_lr", "DPO": "dpo_lr", "DPO (TRL)": "dpo_lr"}
PACKAGE_DIR = Path(__file__).parents[1]


@dataclass
class Failure:
    stage: str
    reason: str  # one sentence
    details: str  # the traceback, for a bug report


@dataclass
class Run:
    """One run of the lab: what it was asked, what it has made so far, and what the report shows."""

    settings: LabSettings
    out: Path
    progress: bool = True
    planned: list[str] = field(default_factory=list)  # the stages it goes through, in order
    finished: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shown_settings: dict = field(default_factory=dict)  # the settings table of the report: what ran
    figures: dict[str, str] = field(default_factory=dict)  # name -> PNG file in ``out``
    # the data
    train: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    data_card: pd.Series | None = None
    dpo_epochs: int = 1
    steps_per_pass: int = 1
    # the models: the tokenizer, the frozen reference, and every model the evaluation compares
    tokenizer: object = None
    ref: object = None
    models: dict = field(default_factory=dict)
    max_length: int = 256
    # the stages' results
    kl_history: pd.DataFrame | None = None
    beta_sweep: pd.DataFrame | None = None
    dpo_history: pd.DataFrame | None = None
    dpo_trl_history: pd.DataFrame | None = None
    parity: pd.DataFrame | None = None  # our DPO loop beside TRL's
    metrics: pd.DataFrame | None = None
    generations: pd.DataFrame | None = None
    metrics_sample: pd.DataFrame | None = None
    generations_sample: pd.DataFrame | None = None

    def note(self, text: str) -> None:
        if text not in self.notes:  # the same warning comes from each model's generations
            self.notes.append(text)
            if self.progress:
                print(f"lab7: note: {text}", file=sys.stderr)

    def save(self, frame: pd.DataFrame, name: str) -> None:
        save_csv(frame, self.out / name)

    def finish(self, stage: str, **figures) -> None:
        """``stage`` is done: its figures saved, the report rewritten."""
        for name, fig in figures.items():
            save_figure(fig, self.out / f"{name}.png")
            self.figures[name] = f"{name}.png"
        self.finished.append(stage)
        self.write_report()

    def write_report(self) -> None:
        write_atomic(self.out / "report.html", render_report(self))


def planned_stages(settings: LabSettings) -> list[str]:
    """The stages a run with ``settings`` goes through, in ``STAGES``' order (the report lists which finished)."""
    optional = {"beta sweep": settings.kl_beta_sweep, "DPO (TRL)": settings.with_trl,
                "evaluation on the sample": settings.also_score_sample}
    return [stage for stage in STAGES if optional.get(stage, True)]


def displacement_note(where: str, chosen: float, rejected: float) -> str:
    """One sentence on how DPO moved the chosen and rejected log-probs (summed, in nats) from the reference's."""
    if chosen < 0:
        return (f"Likelihood displacement ({where}): DPO made the chosen responses less likely than the reference "
                f"does ({chosen:+.2f} nats on average; rejected {rejected:+.2f}). It widened the margin by pushing "
                "both down, so probability went to responses that are in neither column.")
    return (f"DPO moved the chosen responses' log-prob by {chosen:+.2f} nats from the reference's and the rejected "
            f"ones' by {rejected:+.2f} ({where}).")


def loop_comparison(histories: dict[str, pd.DataFrame], steps_per_pass: int) -> pd.DataFrame:
    """Per DPO run: its first-step loss (log 2 for any run that starts at the reference), and the means over its
    last pass of the loss, the reward margin and the reward accuracy."""
    rows = {}
    for name, history in histories.items():
        last_pass = history.iloc[-steps_per_pass:]
        rows[name] = {"steps": len(history), "first-step loss": history["loss"].iloc[0],
                      "last pass: mean loss": last_pass["loss"].mean(),
                      "last pass: mean margin": last_pass["rewards/margins"].mean(),
                      "last pass: reward accuracy": last_pass["rewards/accuracies"].mean()}
    return pd.DataFrame.from_dict(rows, orient="index")


def remove_outputs(out: Path) -> None:
    """Delete the files an earlier run wrote into ``out`` (``OUTPUT_FILES``, half-written ones included), so that
    a rerun into it never mixes old and new results. Other files stay."""
    for name in OUTPUT_FILES:
        for path in (out / name, out / f"{name}.tmp"):
            path.unlink(missing_ok=True)


def why_stage_failed(stage: str, err: Exception, settings: LabSettings) -> str:
    """One sentence for ``err``, raised by ``stage``; it names the flag to change when the loss diverged."""
    text = " ".join(str(err).split()).removeprefix(f"{stage}: ")  # one line, whatever the library wrote
    if isinstance(err, FloatingPointError) and stage in LEARNING_RATE_FLAG:  # from training.read_back
        flag = LEARNING_RATE_FLAG[stage]
        return f"{text.removesuffix('.')} than --{flag.replace('_', '-')} {getattr(settings, flag):g}"
    return text if isinstance(err, (OSError, ValueError)) and text else f"{type(err).__name__}: {text[:300]}"


# The stages: each a plain function of the run, which it adds its results to.

def prepare_data(run: Run) -> None:
    """Read, check and split the pairs; the data card; how many DPO passes; the notes about them."""
    settings = run.settings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = load_pairs(settings.pairs, on_error="skip" if settings.skip_bad_lines else "raise")
    for w in caught:
        run.note(str(w.message))
    run.train, run.test = split_pairs(pairs, settings.test_fraction, settings.seed)
    run.note(f"{len(pairs)} pairs from {settings.pairs}: {len(run.train)} for training, {len(run.test)} held out.")
    copies = len(pairs) - len({tuple(p[f] for f in FIELDS) for p in pairs})
    if copies:
        run.note(f"{copies} pair(s) repeat another pair exactly: each copy counts once more in training.")
    if len({p["prompt"] for p in pairs}) == 1:
        run.note("Every pair has the same prompt, so the held-out prompt is a training prompt too: the evaluation "
                 "shows answers to a prompt the models trained on, not to a new one.")
    run.data_card = data_card(settings.pairs)
    run.save(run.data_card.to_frame(), "data_card.csv")
    run.dpo_epochs = settings.dpo_epochs or scaled_dpo_epochs(len(run.train), settings.batch_size)
    run.steps_per_pass = math.ceil(len(run.train) / settings.batch_size)
    if not settings.dpo_epochs:  # the report's settings table shows what ran (settings.json keeps what was asked)
        run.shown_settings["dpo_epochs"] = f"{run.dpo_epochs} (scaled with the data)"
    run.note(f"DPO: {run.dpo_epochs} pass(es) over the {len(run.train)} training pairs, "
             f"{run.dpo_epochs * run.steps_per_pass} steps"
             + ("." if settings.dpo_epochs else f" (scaled with the data: at least {DPO_MIN_STEPS} steps, "
                f"at most {DPO_MAX_EPOCHS} passes; --dpo-epochs N or --original-settings to choose)."))
    if few := few_pairs_note(len(run.test)):
        run.note(few + ("" if settings.also_score_sample else
                        " Add --also-score-sample to also score the bundled sample's held-out pairs."))
    if settings.model == TINY_GPT2:
        run.note("tiny-gpt2 has random weights: its text is gibberish and its numbers only show that "
                 "the pipeline works. Use smollm2-135m or gpt2 for real results.")


def load_models(run: Run) -> None:
    """The frozen base model: the reference of both updates and the "base" row of the evaluation."""
    base, run.tokenizer = load_model(run.settings.model, run.settings.device)
    run.ref = freeze(base)
    run.models = {"base": run.ref}
    run.max_length = run.settings.max_length
    context = context_length(run.ref)
    if context and run.max_length > context:
        run.note(f"--max-length {run.max_length} is more than {run.settings.model} reads at once: using its context "
                 f"of {context} tokens.")
        run.max_length = context


def common_args(run: Run) -> dict:
    return dict(batch_size=run.settings.batch_size, seed=run.settings.seed, max_length=run.max_length,
                progress=run.progress)


def kl_update(run: Run) -> None:
    s = run.settings
    policy = trainable_copy(run.ref)
    run.kl_history = train_kl(policy, run.ref, run.tokenizer, run.train, s.kl_beta, s.kl_lr, s.kl_steps,
                              **common_args(run))
    run.save(run.kl_history, "history_kl.csv")
    run.models["kl"] = policy
    run.finish("KL update", kl_history=plot_kl_history(run.kl_history))


def beta_sweep(run: Run) -> None:
    s = run.settings
    run.beta_sweep = kl_beta_sweep(run.ref, run.tokenizer, run.train, s.kl_beta_sweep, lr=s.kl_lr, steps=s.kl_steps,
                                   trained={s.kl_beta: run.models["kl"]},  # the KL update's beta: measured again only
                                   **common_args(run))
    run.save(run.beta_sweep, "beta_sweep.csv")
    run.finish("beta sweep", beta_sweep=plot_beta_sweep(run.beta_sweep))


def dpo(run: Run) -> None:
    s = run.settings
    policy = trainable_copy(run.ref)
    with engine.weights_on_disk(run.models["kl"]):  # not needed until the evaluation
        run.dpo_history = train_dpo(policy, run.ref, run.tokenizer, run.train, s.dpo_beta, s.dpo_lr, run.dpo_epochs,
                                    **common_args(run))
    run.save(run.dpo_history, "history_dpo.csv")
    run.models["dpo"] = policy
    last_pass = run.dpo_history.tail(run.steps_per_pass)
    run.note(displacement_note("training pairs, DPO's last pass", last_pass["logps_vs_ref/chosen"].mean(),
                               last_pass["logps_vs_ref/rejected"].mean()))
    run.finish("DPO", dpo_history=plot_dpo_history(run.dpo_history, "DPO (our loop)"))


def dpo_trl(run: Run) -> None:
    from .trl_dpo import train_dpo_trl

    s = run.settings
    policy = trainable_copy(run.ref)
    with engine.weights_on_disk(run.models["kl"]), engine.weights_on_disk(run.models["dpo"]):
        run.dpo_trl_history = train_dpo_trl(policy, run.ref, run.tokenizer, run.train, s.dpo_beta, s.dpo_lr,
                                            run.dpo_epochs, s.batch_size, s.seed, run.max_length)
    run.save(run.dpo_trl_history, "history_dpo_trl.csv")
    run.models["dpo_trl"] = policy
    histories = {"our loop": run.dpo_history, "TRL": run.dpo_trl_history}
    run.parity = loop_comparison(histories, run.steps_per_pass)
    run.finish("DPO (TRL)", dpo_trl_history=plot_dpo_history(run.dpo_trl_history, "DPO (TRL DPOTrainer)"),
               dpo_vs_trl=plot_dpo_comparison(histories))


def evaluate(run: Run, held_out: list[dict], suffix: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every model on ``held_out``: the metrics and generations, saved as ``metrics{suffix}.csv`` and
    ``generations{suffix}.jsonl``."""
    s = run.settings
    metrics, generations = evaluate_models(run.models, run.ref, run.tokenizer, held_out, beta=s.dpo_beta,
                                           seed=s.seed, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                           top_p=s.top_p, max_length=run.max_length, progress=run.progress)
    run.save(metrics, f"metrics{suffix}.csv")
    save_generations(generations, run.out / f"generations{suffix}.jsonl")
    return metrics, generations


def evaluation(run: Run) -> None:
    run.metrics, run.generations = evaluate(run, run.test)
    if "dpo" in run.models:
        dpo_row = run.metrics.loc["dpo"]
        run.note(displacement_note("held-out pairs", dpo_row["chosen_logp_vs_ref"], dpo_row["rejected_logp_vs_ref"]))
    run.finish("evaluation", metrics=plot_metrics(run.metrics))


def evaluation_on_the_sample(run: Run) -> None:
    sample = sample_held_out_pairs(run.train + run.test, run.settings.test_fraction, run.settings.seed)
    run.note(f"Also scored on {len(sample)} held-out pairs of the bundled sample (its pairs whose prompt is in "
             "your own file are left out, so that each prompt is compared once).")
    run.metrics_sample, run.generations_sample = evaluate(run, sample, "_sample")
    run.finish("evaluation on the sample", metrics_sample=plot_metrics(run.metrics_sample))


STAGES: dict[str, Callable[[Run], None]] = {"KL update": kl_update, "beta sweep": beta_sweep, "DPO": dpo,
                                            "DPO (TRL)": dpo_trl, "evaluation": evaluation,
                                            "evaluation on the sample": evaluation_on_the_sample}


def attempt(run: Run, stage: str) -> bool:
    """Run one stage; its warnings from this package become notes. If it fails: False, and the failure is in
    ``run.failures`` and the report."""
    failed_before = len(run.failures)
    with warnings.catch_warnings(record=True) as caught:
        try:
            STAGES[stage](run)
        except Exception as err:  # any failure of a stage ends in the report, not in a traceback
            run.failures.append(Failure(stage, why_stage_failed(stage, err, run.settings), traceback.format_exc()))
    for w in caught:
        if Path(w.filename).is_relative_to(PACKAGE_DIR):
            run.note(str(w.message))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    run.write_report()  # with the stage's notes and failure
    return len(run.failures) == failed_before


def run_lab(settings: LabSettings, out: Path, progress: bool = True, overwrite: bool = False) -> Run:
    """Run every stage, writing its outputs (``OUTPUT_FILES``, those of the stages planned) into ``out`` (which must
    not exist yet, or be empty) as each finishes. The report is rewritten after each stage and lists which stages
    finished. ``overwrite``: first delete an earlier run's outputs.

    A stage that fails ends training: the evaluation runs on the models that finished, every output so far stays,
    and ``run.failures`` (also in the report) says which stage failed and why.
    """
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        remove_outputs(out)
    write_atomic(out / "settings.json", json.dumps(asdict(settings), indent=2, allow_nan=False) + "\n")
    run = Run(settings, out, progress, planned=planned_stages(settings), shown_settings=asdict(settings))
    prepare_data(run)
    run.write_report()
    load_models(run)
    for stage in [s for s in run.planned if s not in ("evaluation", "evaluation on the sample")]:
        if not attempt(run, stage):
            break
    if attempt(run, "evaluation") and settings.also_score_sample:
        attempt(run, "evaluation on the sample")
    return run

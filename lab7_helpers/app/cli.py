"""The ``lab7`` command line: ``lab7 run`` runs the whole lab and writes a report, ``lab7 judge`` judges a run's
answers blind, ``lab7 grade`` grades a class."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

from ..sources.pair_files import load_pairs
from .settings import ORIGINAL_LAB, LabSettings

# torch and the lab's stages load only once the flags and files are known to be usable (run_command)
DEFAULTS = LabSettings()


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (its usage block for ``lab7 run`` is a screen long)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, valid: Callable[[float], bool], expected: str):
    """An argparse type: ``kind`` (int or float) for which ``valid`` holds; NaN and infinity never pass."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        if not (math.isfinite(value) and valid(value)):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
        return value
    return parse


POSITIVE_INT = _number(int, lambda v: v >= 1, "a whole number >= 1")
NON_NEGATIVE_INT = _number(int, lambda v: v >= 0, "a whole number >= 0")
POSITIVE = _number(float, lambda v: v > 0, "a number > 0")
NON_NEGATIVE = _number(float, lambda v: v >= 0, "a number >= 0")


def _betas(text: str) -> list[float]:
    return [NON_NEGATIVE(part) for part in text.split(",") if part.strip()]


def _two_models(text: str) -> tuple[str, str]:
    names = tuple(name.strip() for name in text.split(","))
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise argparse.ArgumentTypeError(f"give two different model names, e.g. base,dpo (got {text!r})")
    return names


def build_parser() -> argparse.ArgumentParser:
    """``lab7 run``, ``lab7 judge`` and ``lab7 grade`` with every flag, validated as it is parsed."""
    parser = Parser(prog="lab7", description="Lab 7: KL-regularized fine-tuning and DPO.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the whole lab (KL update, DPO, evaluation) and write a report",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("--model", help="tiny-gpt2, smollm2-135m, a local folder or a Hub name "
                     "(default: gpt2 if it can be loaded, else smollm2-135m)")
    run.add_argument("--pairs", default=DEFAULTS.pairs, help="JSONL file of prompt/chosen/rejected pairs")
    run.add_argument("--skip-bad-lines", action="store_true",
                     help="leave out the pairs file's bad lines (a note says how many, and names the first) instead "
                     "of stopping at them")
    run.add_argument("--out", type=Path,
                     help="output folder (new or empty, unless --overwrite; default: runs/<time>-<model>)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the outputs of an earlier run in --out (other files there stay)")
    run.add_argument("--seed", type=NON_NEGATIVE_INT, default=DEFAULTS.seed)
    run.add_argument("--test-fraction", type=_number(float, lambda v: 0 < v < 1, "a number between 0 and 1"),
                     default=DEFAULTS.test_fraction)
    run.add_argument("--max-length", default=DEFAULTS.max_length,
                     type=_number(int, lambda v: v >= 16, "a whole number >= 16 (tokens for template and response)"),
                     help="tokens per prompt + response (at most the model's context)")
    run.add_argument("--kl-beta", type=NON_NEGATIVE, default=DEFAULTS.kl_beta)
    run.add_argument("--kl-lr", type=POSITIVE, default=DEFAULTS.kl_lr)
    run.add_argument("--kl-steps", type=POSITIVE_INT, default=DEFAULTS.kl_steps)
    run.add_argument("--kl-beta-sweep", type=_betas, default=[], metavar="B1,B2,...",
                     help="also run the KL update for each beta and plot NLL against KL, e.g. 0,0.05,0.2,1")
    run.add_argument("--dpo-beta", type=POSITIVE, default=DEFAULTS.dpo_beta)
    run.add_argument("--dpo-lr", type=POSITIVE, default=DEFAULTS.dpo_lr)
    run.add_argument("--dpo-epochs", type=POSITIVE_INT,
                     help="passes over the training pairs (default: scaled with the data, said in the output)")
    run.add_argument("--original-settings", action="store_true",
                     help="the original lab's settings where today's defaults differ: " + ", ".join(
                         f"--{name.replace('_', '-')} {value}" for name, value in ORIGINAL_LAB.items()))
    run.add_argument("--batch-size", type=POSITIVE_INT, default=DEFAULTS.batch_size)
    run.add_argument("--max-new-tokens", type=POSITIVE_INT, default=DEFAULTS.max_new_tokens)
    run.add_argument("--temperature", type=NON_NEGATIVE, default=DEFAULTS.temperature, help="0 = greedy")
    run.add_argument("--top-p", type=_number(float, lambda v: 0 < v <= 1, "a number > 0 and <= 1"),
                     default=DEFAULTS.top_p)
    run.add_argument("--with-trl", action="store_true", help="also train a DPO model with TRL's DPOTrainer")
    run.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    run.add_argument("--also-score-sample", action="store_true",
                     help="also evaluate on the bundled sample's held-out pairs (for files with few prompts)")

    judge = commands.add_parser("judge", help="judge a lab7 run's answers blind, in the terminal (judgments.csv)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    judge.add_argument("run_dir", type=Path, help="the folder of a lab7 run (it holds generations.jsonl)")
    judge.add_argument("--models", type=_two_models, default=("base", "dpo"), metavar="OTHER,MODEL",
                       help="the two models: the second one's win rate against the first")
    judge.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="the left/right order")
    judge.add_argument("--overwrite", action="store_true", help="replace an earlier judgments.csv")
    judge.add_argument("--with-sample", action="store_true",
                       help="also judge the answers on the bundled sample's prompts (a run with --also-score-sample)")

    grade = commands.add_parser("grade", help="grade students' notebooks: TODO checks in a sandbox, answers "
                                "collected for manual grading", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    grade.add_argument("submissions", nargs="+", help=".ipynb or exported .json files, or folders holding them")
    grade.add_argument("--out", type=Path, required=True, help="folder for grades.csv, answers.csv, grading.html")
    grade.add_argument("--rubric", help="your copy of the rubric (default: the bundled rubric.toml)")
    grade.add_argument("--timeout", type=POSITIVE_INT, default=120, help="seconds per submission")
    grade.add_argument("--memory-gb", type=POSITIVE, default=4.0, help="memory limit per submission")
    grade.add_argument("--no-sandbox", action="store_true",
                       help="run the students' code without bubblewrap (only for a class you trust)")
    grade.add_argument("--manual", type=Path, metavar="scores.csv",
                       help="Checkpoint points exported from grading.html, merged into grades.csv")
    return parser


def quiet_libraries() -> None:
    """Silence library chatter the lab cannot fix, so that our own progress bars and messages stand out."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient[_ ]checkpointing.*")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    logging.getLogger("trl").setLevel(logging.ERROR)


def fail(problem: str) -> int:
    """``problem`` as one line on stderr; returns the exit status 2."""
    print(f"lab7: error: {problem}", file=sys.stderr)
    return 2


def grade_command(args) -> int:
    """``lab7 grade``: 0 when every file was graded (whatever the grades), 2 for bad arguments or rubric."""
    from ..grading.grade import DEFAULT_RUBRIC, Limits, grade

    missing = [p for p in args.submissions + ([str(args.manual)] if args.manual else []) if not Path(p).exists()]
    if missing:
        return fail(f"not found: {', '.join(missing)}")
    limits = Limits(wall_seconds=args.timeout, memory_gb=args.memory_gb)
    if args.no_sandbox:
        print("lab7: WARNING: --no-sandbox: the students' code runs WITHOUT the bubblewrap sandbox and can read "
              "your files, start processes and change grades.csv; use it only for a class you trust.",
              file=sys.stderr)
    try:
        grades = grade(args.submissions, args.out, args.rubric or DEFAULT_RUBRIC, limits,
                       sandboxed=not args.no_sandbox, manual=args.manual)
    except ValueError as err:
        return fail(str(err))
    print(grades[["status", "total", "max", "problem"]].to_string())
    unscored = grades["not graded by hand"].astype(bool).sum() if "not graded by hand" in grades else 0
    if unscored:
        print(f"\n{unscored} students have Checkpoints without manual points (column 'not graded by hand').")
    print(f"\nGrades: {args.out / 'grades.csv'}\nAnswers: {args.out / 'answers.csv'}\n"
          f"For manual grading: {args.out / 'grading.html'}")
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every clean-up (temporary weight folders) runs on the way out."""


def _terminate(signum, frame):
    raise Terminated


def check_run_paths(args) -> str | None:
    """None if ``--pairs`` and ``--out`` can be used, else the sentence that says why not."""
    pairs, out = Path(args.pairs), args.out
    if pairs.is_dir():
        return f"--pairs {pairs} is a folder; give the pairs file in it (.jsonl, .json or .csv)"
    if not pairs.is_file():
        return f"pairs file not found: {pairs}"
    if out is not None and out.exists() and not out.is_dir():
        return f"--out {out} is a file; give the name of a folder for the results"
    if out is not None and out.exists() and any(out.iterdir()) and not args.overwrite:
        return (f"the output folder {out} already exists and is not empty; choose a new --out, or add --overwrite "
                "to replace the outputs of an earlier run there")
    return None


def main(argv: list[str] | None = None) -> int:
    """The ``lab7`` command. Exit status: 0 done, 2 bad input or a failed stage (one sentence, no traceback),
    130 interrupted (143 for SIGTERM)."""
    args = build_parser().parse_args(argv)
    if args.command == "grade":
        return grade_command(args)
    if args.command == "judge":
        from .judge import judge_run

        return judge_run(args.run_dir, args.models, args.seed, args.overwrite, args.with_sample)
    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        return run_command(args)
    except KeyboardInterrupt as stop:
        out = args.out
        finished = f"; finished stages are in {out}/report.html" if out and (out / "report.html").exists() else ""
        print(f"\nlab7: {'stopped (SIGTERM)' if isinstance(stop, Terminated) else 'interrupted'}{finished}",
              file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    except (OSError, ValueError) as err:  # a bad pairs file (PairFileError), too few pairs, a model that failed to load
        return fail(str(err))
    except Exception as err:  # anything else still ends in one sentence, never a traceback
        return fail(f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def run_command(args) -> int:
    """``lab7 run`` once the flags are parsed; sets ``args.out`` to the output folder as soon as it is known."""
    if problem := check_run_paths(args):
        return fail(problem)
    # a bad pairs file (PairFileError) stops here, in a second; run_lab reads it again and notes its warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_pairs(args.pairs, on_error="skip" if args.skip_bad_lines else "raise", skip_hint="add --skip-bad-lines")
    try:  # torch loads here, for seconds: Ctrl-C meanwhile ends like Ctrl-C later on, without a traceback
        quiet_libraries()
        from .hub import check_model_available, default_model
        from .run import run_lab
        from .tables import with_intervals
    except KeyboardInterrupt:
        print("\nlab7: interrupted while starting", file=sys.stderr)
        return 130
    if args.model is None:  # default_model only picks a model it can load
        args.model, why = default_model()
        print(f"lab7: using model {args.model} ({why}; choose another with --model)", file=sys.stderr)
    elif problem := check_model_available(args.model):
        return fail(problem)
    args.out = args.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{Path(args.model).name}"
    if args.original_settings:
        for name, value in ORIGINAL_LAB.items():
            if getattr(args, name) is None:  # a flag given explicitly still wins
                setattr(args, name, value)
    settings = LabSettings(**{k: v for k, v in vars(args).items()
                              if k not in ("command", "out", "overwrite", "original_settings")})
    started = time.time()
    run = run_lab(settings, args.out, overwrite=args.overwrite)
    if run.failures:
        failure = run.failures[0]
        print(f"\nlab7: error: {failure.stage} failed: {failure.reason}; what finished is in "
              f"{args.out / 'report.html'}", file=sys.stderr)
        return 2
    print(f"\nLab 7 finished in {time.time() - started:.0f} s on {settings.model}.\n")
    print(with_intervals(run.metrics)[["len_words", "refusal_rate", "pref_acc", "reward_acc", "kl_to_ref"]]
          .to_string())
    print("(95% intervals in brackets)")
    print(f"\nReport: {args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``lab7`` command line: ``lab7 run`` runs the whole lab and writes a report."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from .hub import check_model_available, default_model
from ..evaluation import with_intervals
from .run import ORIGINAL_LAB, LabSettings, run_lab

DEFAULTS = LabSettings()


def _number(kind, minimum: float, inclusive: bool, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            expected = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"{what}, got {text}")
        return value
    return parse


def _betas(text: str) -> list[float]:
    parse = _number(float, 0, True, "each beta must be >= 0")
    return [parse(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    """``lab7 run`` and ``lab7 grade`` with every flag, validated as it is parsed."""
    parser = argparse.ArgumentParser(prog="lab7", description="Lab 7: KL-regularized fine-tuning and DPO.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the whole lab (KL update, DPO, evaluation) and write a report",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    positive_int = _number(int, 1, True, "must be a whole number >= 1")
    positive = _number(float, 0, False, "must be > 0")
    non_negative = _number(float, 0, True, "must be >= 0")
    run.add_argument("--model", default=None, help="tiny-gpt2, smollm2-135m, a local folder or a Hub name "
                     "(default: gpt2 if it can be loaded, else smollm2-135m)")
    run.add_argument("--pairs", default=DEFAULTS.pairs, help="JSONL file of prompt/chosen/rejected pairs")
    run.add_argument("--out", type=Path, default=None,
                     help="output folder (must not exist; default: runs/<time>-<model>)")
    run.add_argument("--seed", type=int, default=DEFAULTS.seed)
    run.add_argument("--test-fraction", type=_number(float, 0, False, "must be between 0 and 1"),
                     default=DEFAULTS.test_fraction)
    run.add_argument("--max-length", type=_number(int, 16, True, "must be >= 16 tokens (template + response)"),
                     default=DEFAULTS.max_length)
    run.add_argument("--kl-beta", type=non_negative, default=DEFAULTS.kl_beta)
    run.add_argument("--kl-lr", type=positive, default=DEFAULTS.kl_lr)
    run.add_argument("--kl-steps", type=positive_int, default=DEFAULTS.kl_steps)
    run.add_argument("--kl-beta-sweep", type=_betas, default=[], metavar="B1,B2,...",
                     help="also run the KL update for each beta and plot NLL against KL, e.g. 0,0.05,0.2,1")
    run.add_argument("--dpo-beta", type=positive, default=DEFAULTS.dpo_beta)
    run.add_argument("--dpo-lr", type=positive, default=DEFAULTS.dpo_lr)
    run.add_argument("--dpo-epochs", type=positive_int, default=None,
                     help="passes over the training pairs (default: scaled with the data, said in the output)")
    run.add_argument("--original-settings", action="store_true",
                     help="the original lab's settings where today's defaults differ: " + ", ".join(
                         f"--{name.replace('_', '-')} {value}" for name, value in ORIGINAL_LAB.items()))
    run.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    run.add_argument("--max-new-tokens", type=positive_int, default=DEFAULTS.max_new_tokens)
    run.add_argument("--temperature", type=non_negative, default=DEFAULTS.temperature, help="0 = greedy")
    run.add_argument("--top-p", type=_number(float, 0, False, "must be in (0, 1]"), default=DEFAULTS.top_p)
    run.add_argument("--with-trl", action="store_true", help="also train a DPO model with TRL's DPOTrainer")
    run.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    run.add_argument("--also-score-sample", action="store_true",
                     help="also evaluate on the bundled sample's held-out pairs (for files with few prompts)")

    grade = commands.add_parser("grade", help="grade students' notebooks: TODO checks in a sandbox, answers "
                                "collected for manual grading", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    grade.add_argument("submissions", nargs="+", help=".ipynb or exported .json files, or folders holding them")
    grade.add_argument("--out", type=Path, required=True, help="folder for grades.csv, answers.csv, grading.html")
    grade.add_argument("--rubric", default=None, help="your copy of the rubric (default: the bundled rubric.toml)")
    grade.add_argument("--timeout", type=positive_int, default=120, help="seconds per submission")
    grade.add_argument("--memory-gb", type=positive, default=4.0, help="memory limit per submission")
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


def grade_command(args) -> int:
    """``lab7 grade``: 0 when every file was graded (whatever the grades), 2 for bad arguments or rubric."""
    from ..grading.grade import DEFAULT_RUBRIC, Limits, grade

    missing = [p for p in args.submissions if not Path(p).exists()]
    if missing:
        print(f"lab7: error: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    limits = Limits(wall_seconds=args.timeout, memory_gb=args.memory_gb)
    try:
        grades = grade(args.submissions, args.out, args.rubric or DEFAULT_RUBRIC, limits)
    except ValueError as err:
        print(f"lab7: error: {err}", file=sys.stderr)
        return 2
    print(grades[["status", "total", "max", "problem"]].to_string())
    print(f"\nGrades: {args.out / 'grades.csv'}\nAnswers: {args.out / 'answers.csv'}\n"
          f"For manual grading: {args.out / 'grading.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``lab7`` command. Exit status: 0 done, 2 bad input (with a message), 130 interrupted."""
    args = build_parser().parse_args(argv)
    if args.command == "grade":
        return grade_command(args)
    if args.top_p > 1 or args.test_fraction >= 1:
        print("lab7: error: --top-p must be <= 1 and --test-fraction < 1", file=sys.stderr)
        return 2
    if not Path(args.pairs).is_file():
        print(f"lab7: error: pairs file not found: {args.pairs}", file=sys.stderr)
        return 2
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        print(f"lab7: error: the output folder {args.out} already exists and is not empty; "
              "choose a new --out so no earlier results are overwritten", file=sys.stderr)
        return 2
    quiet_libraries()
    if args.model is None:  # default_model only picks a model it can load
        args.model, why = default_model()
        print(f"lab7: using model {args.model} ({why}; choose another with --model)", file=sys.stderr)
    else:
        problem = check_model_available(args.model)
        if problem:
            print(f"lab7: error: {problem}", file=sys.stderr)
            return 2
    out = args.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{Path(args.model).name}"
    if args.original_settings:
        for name, value in ORIGINAL_LAB.items():
            if getattr(args, name) is None:  # a flag given explicitly still wins
                setattr(args, name, value)
    settings = LabSettings(**{k: v for k, v in vars(args).items() if k not in ("command", "out", "original_settings")})
    started = time.time()
    try:
        run = run_lab(settings, out)
    except (OSError, ValueError) as err:  # a bad pairs file (PairFileError), too few pairs, a model that failed to load
        print(f"lab7: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nlab7: interrupted; finished stages are in {out}/report.html", file=sys.stderr)
        return 130
    print(f"\nLab 7 finished in {time.time() - started:.0f} s on {settings.model}.\n")
    print(with_intervals(run["metrics"])[["len_words", "refusal_rate", "pref_acc", "reward_acc", "kl_to_ref"]]
          .to_string())
    print("(95% intervals in brackets)\n\n" + "\n".join(run["notes"]))
    print(f"\nReport: {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `grm` command: the same services as the web app, without the UI."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from judges.types import Aggregation
from settings import load_settings
from vocabulary import UNFINISHED_RUN_STATUSES, ProtocolName, RunStatus
from webui.figures import progress_line

EXPORT_FORMATS = ["jsonl", "csv", "parquet", "trl-preference", "trl-sft"]
IMPORT_FORMATS = ["auto", "pairs", "chosen-rejected", "llmbar"]
# The syntax services.comparing.parse_setup reads (its keys: SETUP_KEYS there).
SETUP_HELP = (
    "a judge setup as comma-separated key=value: prompt=VERSION (built in, e.g. pairwise-v2, "
    "or made with `grm prompts new`), protocol=pairwise|pointwise|verifier, judge=ID or NAME "
    "of a judge version (`grm versions`), k=SAMPLES, swap=1|0 (judge both orders), "
    "aggregate=mean|vote. Left out: the current judge's (the active version, its protocol "
    "and prompt, k, swap and rule); a prompt alone also sets its protocol. "
    "Example: prompt=pairwise-v3,k=1,swap=1"
)


# The services this command opened: closed before the command returns.
_opened: list = []


def _services():
    from services import Services

    services = Services.open(load_settings())
    _opened.append(services)
    return services


def cmd_serve(args: argparse.Namespace) -> int:
    from app import main as serve_app

    return serve_app(host=args.host, port=args.port) or 0


def cmd_import(args: argparse.Namespace) -> int:
    from storage.importer import ImportFailed

    try:
        report = _services().import_file(Path(args.path), dataset=args.dataset, format=args.format)
    except ImportFailed as exc:
        print(f"import failed, nothing stored: {exc}", file=sys.stderr)
        return 2
    print(
        f"{report.dataset}: {report.new} new, {report.duplicate} duplicate, "
        f"{report.rejected} rejected ({report.format})"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    rows = _services().export(Path(args.out), args.format, dataset=args.dataset)
    print(f"wrote {rows} rows to {args.out}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    print(json.dumps(_services().stats(), indent=2, default=str))
    return 0


def _judge_options(args: argparse.Namespace, settings):
    from judges.judge import JudgeOptions

    return JudgeOptions(
        protocol=args.protocol or settings.judge_protocol,
        k=args.k,
        swap=args.swap,
        temperature=args.temperature if args.temperature is not None else settings.temperature,
        repetition_penalty=args.repetition_penalty
        if args.repetition_penalty is not None
        else settings.repetition_penalty,
        max_new_tokens=args.max_new_tokens or settings.max_new_tokens,
        **({"aggregate": args.aggregate} if args.aggregate else {}),
    )


def cmd_judge(args: argparse.Namespace) -> int:
    services = _services()
    options = _judge_options(args, services.settings)
    if args.pair_text:
        return _judge_one_off(services, args.pair_text, options)
    from tqdm import tqdm

    from services import JobRefused

    with tqdm(total=0, unit="pair", desc="judging") as bar:

        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            report = services.judge_pending(
                dataset=args.dataset, options=options, limit=args.limit, on_progress=on_progress
            )
        except JobRefused as exc:
            print(f"judging refused: {exc}", file=sys.stderr)
            return 2
    if report.resumed:  # an unfinished job of the same dataset and options, left by a dead process
        print(f"continued judging job {report.job_id} where it stopped")
    print(
        f"judged {report.judged} pairs ({report.stored_judgments} judgments stored, "
        f"{report.no_verdict} without a verdict) in {report.seconds:.1f} s"
    )
    state = "cancelled" if report.cancelled else "done"
    print(f"judging job {report.job_id}: {report.done} of {report.total} pairs, {state}")
    return 0


def _judge_one_off(services, texts: list[str], options) -> int:
    """Judge a prompt and two responses given on the command line, streaming to the terminal."""
    from judges.judge import stream_judgment
    from judges.types import PairInput

    prompt, response_a, response_b = texts
    pair = PairInput(prompt=prompt, response_a=response_a, response_b=response_b)
    printed = {"principles": 0, "critique": 0, "verdict_text": 0}
    section = None
    for update in stream_judgment(services.backend(), pair, options):
        if update.section is not None and update.section != section:
            section = update.section
            print(f"\n--- {section.value} ---", flush=True)
        for name in printed:
            text = getattr(update, name)
            if len(text) > printed[name]:
                print(text[printed[name] :], end="", flush=True)
                printed[name] = len(text)
        if update.judgment is not None:
            printed = dict.fromkeys(printed, 0)
            section = None
        if update.aggregate is not None:
            agg = update.aggregate
            print(f"\n\nverdict: {agg.verdict.value}  votes: {agg.votes}", flush=True)
    return 0


# --- retraining (issue 5) -------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from judges.train import TrainingRefused, config_from_args

    services = _services()
    try:
        run_id = services.start_training_run(config_from_args(args))
    except TrainingRefused as exc:
        print(f"training refused: {exc}", file=sys.stderr)
        return 2
    print(f"training run {run_id} started (log: {services.training_run(run_id)['log_path']})")
    return _follow_run(services, run_id) if args.wait else 0


def watch_run(services, run_id: int, every_s: float = 2.0) -> dict:
    """Print the run's progress line whenever it changes until the run ends; the ended run."""
    import time

    last = ""
    while True:
        run = services.training_run(run_id)
        line = progress_line(run)
        if line != last:
            print(line, flush=True)
            last = line
        if run["status"] not in UNFINISHED_RUN_STATUSES:
            return run
        time.sleep(every_s)


def _follow_run(services, run_id: int, every_s: float = 2.0) -> int:
    """Watch the run to its end; exit code 0 only when it is done."""
    run = watch_run(services, run_id, every_s)
    if run["status"] != RunStatus.DONE:
        print(f"run {run_id} {run['status']}: {run['error']}", file=sys.stderr)
        return 1
    print(metrics_table(run["metrics_before"], run["metrics_after"]))
    from judges.evaluation import before_after
    from webui.figures import paired_rows

    for row in paired_rows(before_after(run["metrics_before"], run["metrics_after"])):
        print(f"{row['figure']:24}{row['after']:>36}")
    return 0


def metrics_table(*columns: dict | None, names: tuple[str, ...] = ("before", "after")) -> str:
    """Figures side by side, one metric a line."""
    from webui.figures import metric_rows

    rows = metric_rows(*columns, names=names[: len(columns)])
    header = list(rows[0])
    lines = [f"{'':24}" + "".join(f"{n:>18}" for n in header[1:])]
    lines += [f"{r['figure']:24}" + "".join(f"{r[n]:>18}" for n in header[1:]) for r in rows]
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from storage.queries import NotFoundError

    try:
        report = _services().evaluate_version(args.version, dataset=args.dataset, limit=args.limit)
    except (NotFoundError, ValueError) as exc:
        print(f"not evaluated: {exc}", file=sys.stderr)
        return 2
    print(f"judge version {report['version']} on {args.dataset or 'all labeled pairs'}")
    print(metrics_table(report, names=("value",)))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from judges.backends.adapters import weights_label
    from webui.figures import metric_value

    print(f"{'id':>4} {'':1} {'name':32} {'parent':>6} {'run':>4} {'weights':7}  accuracy")
    for v in _services().versions():
        mark = "*" if v["is_active"] else ""
        weights = weights_label(v["adapter_path"]) or "base"
        print(
            f"{v['id']:>4} {mark:1} {v['name'][:32]:32} {v['parent_id'] or '-':>6} "
            f"{v['training_run_id'] or '-':>4} {weights:7}  "
            f"{metric_value(v['metrics'], 'accuracy')}"
        )
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    from storage.queries import NotFoundError

    services = _services()
    try:
        active = (
            services.rollback_version()
            if args.version == "parent"
            else (services.activate_version(int(args.version), force=args.force))
        )
    except (NotFoundError, ValueError) as exc:
        print(f"not activated: {exc}", file=sys.stderr)
        return 2
    print(f"active judge version: {active['id']} {active['name']}")
    return 0


def cmd_train_worker(args: argparse.Namespace) -> int:
    from services import run_training_worker

    logging.getLogger().setLevel(logging.INFO)
    return run_training_worker(args.run_id)


def _add_retrain_commands(sub) -> None:
    from judges.train import make_parser

    train = make_parser(sub)  # one option per TrainConfig field
    train.add_argument("--wait", action="store_true", help="follow the run to its end")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="a judge version's figures against human labels")
    evaluate.add_argument("--version", type=int, default=None, help="default: the active one")
    evaluate.add_argument("--dataset", default=None)
    evaluate.add_argument("--limit", type=int, default=None)
    evaluate.set_defaults(func=cmd_evaluate)

    versions = sub.add_parser("versions", help="judge versions (* marks the active one)")
    versions.set_defaults(func=cmd_versions)

    activate = sub.add_parser("activate", help="make a judge version active ('parent': roll back)")
    activate.add_argument("version", help="a version id, or 'parent'")
    activate.add_argument(
        "--force",
        action="store_true",
        help="activate even a version significantly worse than its parent",
    )
    activate.set_defaults(func=cmd_activate)

    worker = sub.add_parser("train-worker")  # started by services; not for people
    worker.add_argument("run_id", type=int)
    worker.set_defaults(func=cmd_train_worker)


# --- guidelines, prompt versions and comparisons (issue 14) ---------------------------------


def _refused(what: str, exc: Exception) -> int:
    print(f"{what}: {exc}", file=sys.stderr)
    return 2


def _read_text(path: str, limit_bytes: int) -> str:
    """A UTF-8 file's text ("-": standard input), refused unread when over `limit_bytes`."""
    if path == "-":
        text = sys.stdin.read(limit_bytes + 1)
    else:
        if Path(path).stat().st_size > limit_bytes:
            raise ValueError(f"{path} is over {limit_bytes:,} bytes")
        text = Path(path).read_text(encoding="utf-8")
    if len(text.encode("utf-8", "surrogatepass")) > limit_bytes:
        raise ValueError(f"{path} is over {limit_bytes:,} bytes")
    return text


def cmd_guidelines(args: argparse.Namespace) -> int:
    from services.prompts import MAX_GUIDELINES_CHARS

    services = _services()
    try:
        if args.action == "show":
            text = services.dataset_guidelines(args.dataset)
            print(text if text else f"(no guidelines for {args.dataset})")
            return 0
        text = "" if args.action == "clear" else _read_text(args.file, 4 * MAX_GUIDELINES_CHARS)
        done = services.set_dataset_guidelines(args.dataset, text)
    except (ValueError, LookupError, OSError) as exc:
        return _refused("guidelines not changed", exc)
    chars = done["characters"]
    print(f"{args.dataset}: guidelines " + (f"set ({chars:,} characters)" if chars else "cleared"))
    return 0


def cmd_prompts_list(args: argparse.Namespace) -> int:
    print(f"{'version':40} {'protocol':10} {'from':24} note")
    for v in _services().prompt_versions(args.protocol):
        mark = "built in, read-only" if v["read_only"] else (v["note"] or "")
        print(f"{v['version']:40} {v['protocol']:10} {v['parent_version'] or '-':24} {mark[:60]}")
    return 0


def cmd_prompts_show(args: argparse.Namespace) -> int:
    services = _services()
    try:
        if args.json:
            print(services.prompt_version_json(args.version), end="")
            return 0
        v = services.prompt_version(args.version)
    except LookupError as exc:
        return _refused("no such prompt", exc)
    budgets = ", ".join(f"{k}={n}" for k, n in v["budgets"].items())
    print(f"{v['version']} ({v['protocol']}{', read-only' if v['read_only'] else ''})")
    print(f"from: {v['parent_version'] or '-'}   budgets: {budgets}   note: {v['note'] or '-'}")
    for title, key in (("system", "system"), ("user", "user"), ("answer prefix", "answer_prefix")):
        print(f"--- {title} ---\n{v[key]}")
    return 0


def cmd_prompts_new(args: argparse.Namespace) -> int:
    from judges.prompts import MAX_SYSTEM_CHARS, MAX_USER_CHARS

    try:
        texts = {
            "system": _read_text(args.system, 4 * MAX_SYSTEM_CHARS) if args.system else None,
            "user": _read_text(args.user, 4 * MAX_USER_CHARS) if args.user else None,
            "answer_prefix": args.answer_prefix,
        }
        budgets = dict(_budget(text) for text in args.budget)
        made = _services().new_prompt_version(
            args.version, args.parent, budgets=budgets, note=args.note, **texts
        )
    except (ValueError, LookupError, OSError) as exc:
        return _refused("prompt version not made", exc)
    print(f"prompt version {made['version']} ({made['protocol']}) made from {args.parent}")
    return 0


def _budget(text: str) -> tuple[str, int]:
    name, _, chars = text.partition("=")
    if not chars.strip().isdigit():
        raise ValueError(f"--budget {text!r} is not NAME=CHARACTERS")
    return name.strip(), int(chars)


def cmd_prompts_export(args: argparse.Namespace) -> int:
    try:
        path = _services().export_prompt_version(args.version, Path(args.out))
    except (LookupError, OSError) as exc:
        return _refused("not exported", exc)
    print(f"wrote prompt version {args.version} to {path}")
    return 0


def cmd_prompts_import(args: argparse.Namespace) -> int:
    try:
        done = _services().import_prompt_version(Path(args.path))
    except (ValueError, OSError) as exc:
        return _refused("not imported", exc)
    print(f"prompt version {done['version']} {'imported' if done['stored'] else 'already here'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    services = _services()
    try:
        report = services.compare_setups(
            args.a, args.b, args.dataset, limit=args.limit, gold=args.gold
        )
    except (ValueError, LookupError) as exc:
        return _refused("not compared", exc)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(comparison_table(report))
    return 0


def comparison_table(report: dict, shown: int = 20) -> str:
    """Two setups' figures side by side, McNemar's test and the pairs where they differ."""
    from webui.figures import comparison_rows, mcnemar_line

    lines = [
        f"dataset {report['dataset']}: {report['pairs']} {report['labels']}, {report['scored']} "
        "of them A, B or tie",
        f"A: {report['a']['describe']}",
        f"B: {report['b']['describe']}",
        f"{'':24}{'A':>14}{'B':>14}",
        *(f"{r['figure']:24}{r['A']:>14}{r['B']:>14}" for r in comparison_rows(report)),
        mcnemar_line(report),
        f"pairs where they differ: {len(report['differ'])}",
    ]
    lines += [
        f"  pair {r['pair_id']:>6}  human {r['human']:8} A {r['a']:5} B {r['b']:5} {r['prompt']}"
        for r in report["differ"][:shown]
    ]
    if len(report["differ"]) > shown:
        lines.append(f"  ... and {len(report['differ']) - shown} more (--json lists all)")
    return "\n".join(lines)


def _add_prompt_commands(sub) -> None:
    guide = sub.add_parser(
        "guidelines", help="a dataset's guidelines (markdown) for people and judge"
    )
    actions = guide.add_subparsers(dest="action", required=True)
    for action, text in (("show", "print them"), ("set", "replace them by a file's text")):
        one = actions.add_parser(action, help=text)
        one.add_argument("dataset")
        if action == "set":
            one.add_argument("file", help="a UTF-8 markdown file ('-': standard input)")
    actions.add_parser("clear", help="remove them").add_argument("dataset")
    guide.set_defaults(func=cmd_guidelines)

    prompts = sub.add_parser("prompts", help="judge prompts as stored versions")
    verbs = prompts.add_subparsers(dest="action", required=True)
    listed = verbs.add_parser("list", help="every version (built-ins are read-only)")
    listed.add_argument("--protocol", choices=ProtocolName.values())
    listed.set_defaults(func=cmd_prompts_list)
    show = verbs.add_parser("show", help="one version's texts")
    show.add_argument("version")
    show.add_argument("--json", action="store_true", help="as the exported JSON")
    show.set_defaults(func=cmd_prompts_show)
    new = verbs.add_parser("new", help="a new version: a copy of another with edits")
    new.add_argument("version", help="its name: letters, digits, . _ - (at most 40)")
    new.add_argument("--from", dest="parent", required=True, help="the version to copy")
    new.add_argument("--system", help="file with the new system message")
    new.add_argument("--user", help="file with the new user message ({prompt}, {response_a} ...)")
    new.add_argument("--answer-prefix", help="how the judge's answer starts")
    new.add_argument("--budget", action="append", default=[], help="e.g. max_response_chars=2000")
    new.add_argument("--note", help="why this version")
    new.set_defaults(func=cmd_prompts_new)
    export = verbs.add_parser("export", help="write a version as a small JSON file")
    export.add_argument("version")
    export.add_argument("--out", required=True)
    export.set_defaults(func=cmd_prompts_export)
    imported = verbs.add_parser("import", help="store a version from an exported JSON file")
    imported.add_argument("path")
    imported.set_defaults(func=cmd_prompts_import)

    compare = sub.add_parser(
        "compare",
        help="two judge setups on the same labels",
        description="Judge a dataset's labeled pairs with two judge setups (reusing stored "
        "judgments of the same setup, prompt and sampling) and report accuracy, Cohen's kappa and "
        "position consistency side by side, McNemar's exact test and the pairs that differ.",
    )
    compare.add_argument("--a", required=True, metavar="SETUP", help=SETUP_HELP)
    compare.add_argument("--b", required=True, metavar="SETUP", help="the other setup, as --a")
    compare.add_argument("--dataset", required=True)
    compare.add_argument("--limit", type=int, help="compare on the first N labeled pairs")
    compare.add_argument(
        "--gold",
        action="store_true",
        help="score against the labels imported with the dataset (its gold_label, e.g. "
        "LLMBar's human labels) instead of the labels people made in the app",
    )
    compare.add_argument("--json", action="store_true", help="the whole report as JSON")
    compare.set_defaults(func=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grm", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="open the web app")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=cmd_serve)

    imp = sub.add_parser("import", help="import pairs from JSONL, CSV or Parquet")
    imp.add_argument("path")
    imp.add_argument("--dataset", help="dataset name (default: the file name)")
    imp.add_argument("--format", choices=IMPORT_FORMATS, default="auto")
    imp.set_defaults(func=cmd_import)

    exp = sub.add_parser("export", help="export labels with their pairs and judgments")
    exp.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    exp.add_argument("--out", required=True)
    exp.add_argument("--dataset")
    exp.set_defaults(func=cmd_export)

    stats = sub.add_parser("stats", help="datasets, pairs, labeled, judged, per annotator")
    stats.set_defaults(func=cmd_stats)

    judge = sub.add_parser("judge", help="judge pending pairs (or one pair given as text)")
    judge.add_argument("--dataset")
    judge.add_argument("--protocol", choices=ProtocolName.values())
    judge.add_argument("--k", type=int, default=1, help="samples per pair")
    judge.add_argument("--swap", action="store_true", help="judge both orders")
    judge.add_argument(
        "--aggregate",
        choices=[rule.value for rule in Aggregation],
        help="combine samples and orders by the mean of the judge's evidence (default: mean "
        "log-odds, score difference or P(Yes)) or by a vote of stated verdicts (vote)",
    )
    judge.add_argument("--temperature", type=float)
    judge.add_argument(
        "--repetition-penalty",
        type=float,
        help="make tokens already in the prompt or the answer less likely (1: off; default 1.1)",
    )
    judge.add_argument("--max-new-tokens", type=int)
    judge.add_argument("--limit", type=int)
    judge.add_argument(
        "--pair-text",
        nargs=3,
        metavar=("PROMPT", "RESPONSE_A", "RESPONSE_B"),
        help="judge this one pair and stream the reasoning to the terminal (nothing stored)",
    )
    judge.set_defaults(func=cmd_judge)
    _add_retrain_commands(sub)
    _add_prompt_commands(sub)
    sub.metavar = "{" + ",".join(c for c in sub.choices if c != "train-worker") + "}"
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    finally:
        # Without this, `grm judge` on vLLM finished its job and then waited forever for the
        # engine's child processes.
        while _opened:
            _opened.pop().close()


if __name__ == "__main__":
    sys.exit(main())

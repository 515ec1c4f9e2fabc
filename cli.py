"""The `grm` command: the same services as the web app, without the UI."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from settings import load_settings

EXPORT_FORMATS = ["jsonl", "csv", "parquet", "trl-preference", "trl-sft"]
IMPORT_FORMATS = ["auto", "pairs", "chosen-rejected", "llmbar"]
PROTOCOLS = ["pairwise", "pointwise", "verifier"]


def _services():
    from services import Services

    return Services.open(load_settings())


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
        max_new_tokens=args.max_new_tokens or settings.max_new_tokens,
    )


def cmd_judge(args: argparse.Namespace) -> int:
    services = _services()
    options = _judge_options(args, services.settings)
    if args.pair_text:
        return _judge_one_off(services, args.pair_text, options)
    from tqdm import tqdm

    with tqdm(total=0, unit="pair", desc="judging") as bar:

        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        report = services.judge_pending(
            dataset=args.dataset, options=options, limit=args.limit, on_progress=on_progress
        )
    print(
        f"judged {report.judged} pairs ({report.stored_judgments} judgments stored, "
        f"{report.no_verdict} without a verdict) in {report.seconds:.1f} s"
    )
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
    judge.add_argument("--protocol", choices=PROTOCOLS)
    judge.add_argument("--k", type=int, default=1, help="samples per pair (majority vote)")
    judge.add_argument("--swap", action="store_true", help="judge both orders")
    judge.add_argument("--temperature", type=float)
    judge.add_argument("--max-new-tokens", type=int)
    judge.add_argument("--limit", type=int)
    judge.add_argument(
        "--pair-text",
        nargs=3,
        metavar=("PROMPT", "RESPONSE_A", "RESPONSE_B"),
        help="judge this one pair and stream the reasoning to the terminal (nothing stored)",
    )
    judge.set_defaults(func=cmd_judge)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

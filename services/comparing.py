"""Two judge setups compared on the same labels (`grm compare`).

A setup is a prompt version x a judge version x a protocol x k / swap / aggregation rule,
sampled as the current judge samples (temperature, penalty, tokens, seed, log-probs). Each
labeled pair of the dataset is judged by each setup once: a stored run of that setup, sampled
so, whose prompt is what the setup would send now (same template, same guidelines) is reused,
the other pairs are judged and stored like any judgment. Then both setups' verdicts (each
run's samples combined by the setup's rule) are scored against the same human labels, the
pair's latest label: accuracy, Cohen's kappa, position consistency side by side, McNemar's
exact test on the pairs one setup got right and the other did not, and the pairs where the
two verdicts differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from judges import metrics
from judges.judge import JudgeOptions, judge_pairs
from judges.prompts import LATEST
from judges.protocols import Protocol, prompt_cuts
from judges.scaling import aggregate
from judges.types import AggregateJudgment, Aggregation, Judgment, PairInput, Status, Verdict
from services.analysis import position_figures
from services.prompts import dataset_key, judge_protocol, resolve_template
from services.records import pair_input
from storage import prompt_versions, queries
from storage.db import reading
from storage.pairs import gold_labeled_pairs
from vocabulary import COMPARING_VERDICTS, ProtocolName

if TYPE_CHECKING:
    from services.analysis import Analysis
    from services.judging import Judging

SETUP_KEYS = ("prompt", "protocol", "judge", "k", "swap", "aggregate")
PREVIEW_CHARS = 80
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class JudgeSetup:
    """One way of judging: what `grm compare` puts side by side."""

    protocol: str
    prompt_version: str
    judge_version_id: int
    judge_version: str
    k: int
    swap: bool
    aggregate: str

    def describe(self) -> str:
        orders = ", swap" if self.swap else ""
        return (
            f"{self.prompt_version} by judge {self.judge_version_id} ({self.judge_version}), "
            f"k={self.k}{orders}, {self.aggregate}"
        )

    def options(self, base: JudgeOptions) -> JudgeOptions:
        """The current judge's options (sampling, tokens, seed) with this setup's choices."""
        chosen = {
            "protocol": self.protocol,
            "prompt_version": self.prompt_version,
            "k": self.k,
            "swap": self.swap,
            "aggregate": self.aggregate,
        }
        return JudgeOptions(**{**base.model_dump(), **chosen})


def parse_setup(text: str) -> dict[str, str]:
    """ "prompt=pairwise-v2,k=1,swap=1" as {"prompt": "pairwise-v2", "k": "1", "swap": "1"};
    ValueError naming a part without "=", an unknown key or a key given twice."""
    values: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not value:
            raise ValueError(f"setup part {part!r} is not key=value")
        if key not in SETUP_KEYS:
            raise ValueError(f"unknown setup key {key!r}; known: {', '.join(SETUP_KEYS)}")
        if key in values:
            raise ValueError(f"setup key {key!r} given twice")
        values[key] = value
    return values


def _flag(value: object) -> bool:
    text = str(value).strip().lower()
    if text not in _TRUE + _FALSE:
        raise ValueError(f"swap must be 1 or 0 (true/false), not {value!r}")
    return text in _TRUE


class Comparing:
    def __init__(self, sessions: sessionmaker[Session], judging: Judging, analysis: Analysis):
        self.sessions = sessions
        self.judging = judging
        self.analysis = analysis

    def setup(self, spec: str | Mapping[str, Any]) -> JudgeSetup:
        """A setup from "key=value,..." (parse_setup; `grm compare --help`) or a dict of the
        same keys; what is not given comes from the current judge. ValueError / NotFoundError
        say what is wrong."""
        values = parse_setup(spec) if isinstance(spec, str) else _checked_dict(spec)
        base = self.judging.judge.options
        with reading(self.sessions) as s:
            protocol, prompt = _protocol_and_prompt(s, values, base)
            judge = _judge_version(s, values.get("judge"))
        if judge is None:
            judge = _judge_version_by_id(self.sessions, self.judging.version_id())
        try:
            k = int(values.get("k", base.k))
        except ValueError:
            raise ValueError(f"k must be a whole number, not {values['k']!r}") from None
        return JudgeSetup(
            protocol=protocol,
            prompt_version=prompt,
            judge_version_id=judge["id"],
            judge_version=judge["name"],
            k=k,
            swap=_flag(values.get("swap", base.swap)),
            aggregate=Aggregation(values.get("aggregate", base.aggregate)).value,
        )

    def compare(
        self,
        a: str | Mapping[str, Any] | JudgeSetup,
        b: str | Mapping[str, Any] | JudgeSetup,
        dataset: str | int,
        limit: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        gold: bool = False,
    ) -> dict[str, Any]:
        """Judge the dataset's labeled pairs that either setup has not judged yet, then both
        setups' figures side by side on the same labels (see the module docstring). With
        `gold`, the labels are the ones imported with the dataset (its human labels, e.g.
        LLMBar's), not the ones people made here."""
        setups = [x if isinstance(x, JudgeSetup) else self.setup(x) for x in (a, b)]
        with reading(self.sessions) as s:
            dataset_id = dataset_key(s, dataset)
            records = (gold_labels if gold else latest_labels)(s, dataset_id)[:limit]
        if not records:
            kind = "imported labels (gold_label)" if gold else "labeled pairs"
            raise ValueError(f"no {kind} to compare on in dataset {dataset!r}")
        pairs = [record_pair(r) for r in records]
        plans = [self._plan(setup, pairs, dataset_id) for setup in setups]
        total = sum(len(missing) for _, _, missing in plans)
        done = 0
        for setup, (options, protocol, missing) in zip(setups, plans, strict=True):
            self._judge(setup, options, protocol, missing, _offset(on_progress, done, total))
            done += len(missing)
        verdicts = []
        for setup, (options, protocol, _) in zip(setups, plans, strict=True):
            with reading(self.sessions) as s:
                verdicts.append(fitting_verdicts(s, setup, options, protocol, pairs))
        judged_now = [len(missing) for _, _, missing in plans]
        report = comparison_report(records, setups, verdicts, judged_now)
        labels = "imported labels" if gold else "labeled pairs"
        return {"dataset": records[0]["dataset"], "labels": labels, **report}

    def _plan(
        self, setup: JudgeSetup, pairs: list[PairInput], dataset_id: int
    ) -> tuple[JudgeOptions, Protocol, list[PairInput]]:
        """The setup's options and protocol (its template, the dataset's guidelines) and the
        pairs it has no fitting run of."""
        options = setup.options(self.judging.judge.options)
        with reading(self.sessions) as s:
            protocol = judge_protocol(s, options, dataset_id)
            found = fitting_verdicts(s, setup, options, protocol, pairs)
        return options, protocol, [p for p in pairs if p.pair_id not in found]

    def _judge(
        self,
        setup: JudgeSetup,
        options: JudgeOptions,
        protocol: Protocol,
        pairs: list[PairInput],
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        if not pairs:
            return
        version = _judge_version_by_id(self.sessions, setup.judge_version_id)
        backend, owned = self.analysis.version_backend(version)
        try:
            results = judge_pairs(
                backend, pairs, options, str(setup.judge_version_id), on_progress, None, protocol
            )
        finally:
            if owned:
                backend.close()
        self.judging.store(results, setup.judge_version_id, options)


def _offset(
    on_progress: Callable[[int, int], None] | None, done: int, total: int
) -> Callable[[int, int], None] | None:
    if on_progress is None:
        return None
    return lambda n, _total: on_progress(done + n, total)


def _checked_dict(spec: Mapping[str, Any]) -> dict[str, str]:
    given = {key: str(value) for key, value in spec.items() if value not in (None, "")}
    unknown = sorted(set(given) - set(SETUP_KEYS))
    if unknown:
        raise ValueError(f"unknown setup keys {unknown}; known: {', '.join(SETUP_KEYS)}")
    return given


def _protocol_and_prompt(s: Session, values: dict[str, str], base: JudgeOptions) -> tuple[str, str]:
    """The setup's protocol and prompt version: as given, else the prompt's protocol, else the
    current judge's (its prompt where it is of that protocol, else the protocol's latest)."""
    protocol = values.get("protocol")
    if protocol is not None and protocol not in ProtocolName.values():
        raise ValueError(
            f"unknown protocol {protocol!r}; known: {', '.join(ProtocolName.values())}"
        )
    prompt = values.get("prompt")
    if prompt is not None:
        template = resolve_template(s, prompt)
        if protocol is not None and template.name != protocol:
            raise ValueError(f"prompt {prompt} is for {template.name}, not {protocol}")
        return template.name, prompt
    protocol = protocol or base.protocol
    if base.prompt_version and base.protocol == protocol:
        return protocol, base.prompt_version
    return protocol, LATEST[protocol]


def _judge_version(s: Session, key: str | None) -> dict[str, Any] | None:
    """A judge version by id or name; None for the default (the active one)."""
    if key is None or key == "active":
        return None
    versions = queries.list_judge_versions(s)
    found = [v for v in versions if str(v["id"]) == key or v["name"] == key]
    if not found:
        raise queries.NotFoundError(f"judge version {key!r} not found (grm versions)")
    return found[0]


def _judge_version_by_id(sessions: sessionmaker[Session], version_id: int) -> dict[str, Any]:
    with reading(sessions) as s:
        found = _judge_version(s, str(version_id))
    assert found is not None
    return found


# --- labels, stored runs and the figures -------------------------------------------------------


def latest_labels(s: Session, dataset_id: int) -> list[dict[str, Any]]:
    """Each labeled pair of the dataset once, with its latest non-skip label, by pair id."""
    latest: dict[int, dict[str, Any]] = {}
    for record in queries.labeled_records(s, dataset_id=dataset_id):
        kept = latest.get(record["pair_id"])
        if kept is None or (record["labeled_at"], record["label_id"]) > (
            kept["labeled_at"],
            kept["label_id"],
        ):
            latest[record["pair_id"]] = record
    return [latest[pair_id] for pair_id in sorted(latest)]


def gold_labels(s: Session, dataset_id: int) -> list[dict[str, Any]]:
    """Each pair of the dataset imported with a label, as latest_labels' records (the label
    is the imported one), by pair id."""
    views = gold_labeled_pairs(s, dataset_id)
    return [{**dataclasses.asdict(v), "pair_id": v.id, "label": v.gold_label} for v in views]


def record_pair(record: dict[str, Any]) -> PairInput:
    """A labeled record's pair as the judges see it."""
    fields = [f.name for f in dataclasses.fields(queries.PairView) if f.name not in ("id", "meta")]
    view = queries.PairView(id=record["pair_id"], meta=None, **{f: record[f] for f in fields})
    return pair_input(view)


def fitting_verdicts(
    s: Session,
    setup: JudgeSetup,
    options: JudgeOptions,
    protocol: Protocol,
    pairs: list[PairInput],
) -> dict[int, AggregateJudgment]:
    """Per pair, the setup's newest stored run sampled as `options` sample (the setup's
    options) whose prompt is what `protocol` sends now, its samples combined by the setup's
    rule; pairs without one are left out."""
    runs = prompt_versions.setup_runs(
        s,
        [p.pair_id for p in pairs if p.pair_id is not None],
        judge_version_id=setup.judge_version_id,
        protocol=setup.protocol,
        prompt_version=setup.prompt_version,
        k=setup.k,
        swap=setup.swap,
        sampling=options.sampling(),
    )
    found = {}
    for pair in pairs:
        run = runs.get(pair.pair_id)  # type: ignore[arg-type]
        if run is not None and _sent_as_now(protocol, pair, run["samples"]):
            samples = [stored_judgment(row) for row in run["samples"]]
            found[pair.pair_id] = aggregate(samples, setup.aggregate)
    return found  # type: ignore[return-value]


def _sent_as_now(protocol: Protocol, pair: PairInput, samples: list[dict[str, Any]]) -> bool:
    """Whether a stored run's prompt (its first original-order sample's) is what the
    protocol builds for the pair now: the same template and the same guidelines."""
    sent = next((r["prompt_messages"] for r in samples if not r["swapped"]), None)
    if not sent:
        return False
    cuts = prompt_cuts(pair, protocol.name, protocol.template, sent, protocol.guidelines)
    return cuts is not None


def stored_judgment(row: dict[str, Any]) -> Judgment:
    """A stored judgment row as the judge's value, as far as combining samples needs it."""
    scored = row["score_a"] is not None and row["score_b"] is not None
    return Judgment(
        protocol=row["protocol"],
        prompt_version=row["prompt_version"],
        verdict=Verdict(row["verdict"]),
        status=Status(row["status"]),
        scores=(row["score_a"], row["score_b"]) if scored else None,
        verdict_probability=row["verdict_probability"],
        verdict_source=row["verdict_source"],
        swapped=bool(row["swapped"]),
        sample_index=row["sample_index"],
        pair_id=row["pair_id"],
    )


def comparison_report(
    records: list[dict[str, Any]],
    setups: list[JudgeSetup],
    verdicts: list[dict[int, AggregateJudgment]],
    judged_now: list[int],
) -> dict[str, Any]:
    """Both setups' figures on the same labels, McNemar's exact test, the pairs that differ."""
    human = [r["label"] for r in records]
    said = [[_verdict(found, r["pair_id"]) for r in records] for found in verdicts]
    columns = []
    for setup, found, verdict_list, judged in zip(setups, verdicts, said, judged_now, strict=True):
        figures = metrics.agreement_report(
            [{"judge": v, "human": h} for v, h in zip(verdict_list, human, strict=True)]
        )
        figures["position_consistency"] = position_figures(
            [
                {"judge_swap": setup.swap, "judge_position_consistent": a.position_consistent}
                for a in found.values()
            ]
        )
        figures.update(
            setup=asdict(setup),
            describe=setup.describe(),
            judged_now=judged,  # pairs judged for this comparison
            reused=len(records) - judged,  # pairs whose stored run was used as it was
            without_verdict_run=len(records) - len(found),  # every sample failed
        )
        columns.append(figures)
    scored = [i for i, h in enumerate(human) if h in COMPARING_VERDICTS]
    right = [[said[x][i] == human[i] for i in scored] for x in (0, 1)]
    differ = [
        {
            "pair_id": r["pair_id"],
            "human": r["label"],
            "a": said[0][i],
            "b": said[1][i],
            "prompt": _preview(r["prompt"]),
        }
        for i, r in enumerate(records)
        if said[0][i] != said[1][i]
    ]
    return {
        "pairs": len(records),
        "scored": len(scored),
        "a": columns[0],
        "b": columns[1],
        "mcnemar": metrics.mcnemar_exact(right[0], right[1]),
        "differ": differ,
    }


def _verdict(found: dict[int, AggregateJudgment], pair_id: int) -> str:
    result = found.get(pair_id)
    return result.verdict.value if result is not None else Verdict.NONE.value


def _preview(prompt: Any) -> str:
    text = prompt if isinstance(prompt, str) else " / ".join(t["content"] for t in prompt)
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"

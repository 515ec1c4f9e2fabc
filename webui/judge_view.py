"""What the Label tab shows of a judgment: three live panels, the verdict badge, the samples.

Works from the live `StreamUpdate`s of `Services.stream_pair_judgment` and from a judgment run
stored earlier, so a pair judged by a batch run opens with its reasoning already on screen.
A stored run shows the decision stored with it (the judge's own, made live); only rows stored
without a run are decided again, by `judges.scaling.aggregate` with the rule stored with them.
With swap on, the samples table shows what the judge said in each order and P(A), so a person
sees a position bias instead of a bare "tie".
Every text the judge wrote goes through `render.safe_markdown`: judge output is untrusted too.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from judges.scaling import aggregate
from judges.types import Aggregation, Judgment, Status, Verdict
from webui.render import panel, safe_markdown, safe_text

PANEL_TITLES = ("Principles", "Critique", "Verdict")
EMPTY_PANEL = '<div class="grm-empty">—</div>'
BADGE_IDLE = '<div class="grm-badge" data-state="idle">Not judged yet — press <kbd>J</kbd></div>'
BADGE_FAILED = (
    '<div class="grm-badge" data-state="error">Judge failed — press <kbd>J</kbd> to retry</div>'
)
BADGE_RUNNING = '<div class="grm-badge" data-state="running">Judging…</div>'


@dataclass
class SampleRow:
    """One finished judge sample, in the pair's original order."""

    index: int
    swapped: bool
    verdict: str
    status: str
    probability: float | None
    source: str
    judgment_id: int | None = None
    error: str | None = None  # why the sample failed (status error), for the status line

    @property
    def said(self) -> str:
        """The verdict as the judge stated it, in the order it was shown (A<->B when swapped)."""
        flip = {"A": "B", "B": "A"} if self.swapped else {}
        return flip.get(self.verdict, self.verdict)

    @property
    def probability_a(self) -> float | None:
        """P(A over B) in the pair's original order, where the sample has a probability."""
        if self.probability is None or self.verdict not in ("A", "B"):
            return None
        return self.probability if self.verdict == "A" else 1.0 - self.probability


@dataclass
class JudgeDisplay:
    """The three panels' text plus the finished samples and, at the end, the decision."""

    principles: str = ""
    critique: str = ""
    verdict_text: str = ""
    samples: list[SampleRow] = field(default_factory=list)
    sample_count: int = 1
    verdict: str | None = None  # set once the judgment (or vote) is final
    votes: dict[str, int] = field(default_factory=dict)
    position_consistent: bool | None = None
    protocol: str = "pairwise"
    aggregation: str | None = None  # the rule that decided: "mean" or "vote"
    margin: float | None = None  # the mean rule's evidence for A over B
    probability: float | None = None  # the mean rule's P(verdict)
    stored: bool = False
    running: bool = False  # a judgment is streaming into this display
    live_sample: int = 0  # position of the sample being written (0-based)
    live_swapped: bool = False
    failed: bool = False  # the judge broke off; what it wrote so far stays on screen

    def panels(self) -> tuple[str, str, str]:
        """The principles, critique and verdict panels as safe HTML."""
        texts = (self.principles, self.critique, self.verdict_text)
        return tuple(
            panel(title, _body(text), f"grm-box-{title.lower()}")
            for title, text in zip(PANEL_TITLES, texts, strict=True)
        )

    def badge(self) -> str:
        """Verdict, probability and where it came from; "no verdict" when the judge gave none."""
        if self.failed:
            return BADGE_FAILED
        if self.verdict is None:
            return self._running_badge() if self.running else BADGE_IDLE
        if self.verdict == "none" and self._all_failed():
            return BADGE_FAILED  # the judge broke off: a failure, not a judge that had no opinion
        verdict = self.verdict
        state = "none" if verdict == "none" else "done"
        title = "no verdict" if verdict == "none" else _verdict_name(verdict)
        detail = self._badge_detail()
        return (
            f'<div class="grm-badge" data-state="{state}" data-verdict="{html.escape(verdict)}">'
            f'<span class="grm-badge-verdict">{title}</span>'
            f'<span class="grm-badge-detail">{detail}</span></div>'
        )

    def problem(self) -> str | None:
        """A sentence for the status line when the judgment is not a clean verdict, else None.

        Says why (the backend's error, the token limit, no or contradicting verdicts) and what
        the person can do; the text the judge wrote stays in the panels either way.
        """
        if self.verdict is None:
            return None
        failed = [s for s in self.samples if s.status == "error"]
        reason = next((s.error for s in failed if s.error), "no reason given")
        if self.verdict != "none":
            if not failed:
                return None
            return f"{len(failed)} of {len(self.samples)} judge samples failed: {reason}."
        if self._all_failed():
            return (
                f"The judge failed: {reason}. What it wrote so far is kept above; "
                "press J to retry, or label the pair yourself."
            )
        if any(s.status == "truncated" for s in self.samples):
            return (
                "No verdict: the judge was cut off at its token limit (max new tokens) before "
                "it gave one. Press J to retry, raise the limit in the Judge tab, or label it "
                "yourself."
            )
        return (
            "No verdict: the judge stated none, or two that contradict each other. "
            "Press J to retry, or label the pair yourself."
        )

    def _all_failed(self) -> bool:
        return bool(self.samples) and all(s.status == "error" for s in self.samples)

    def _running_badge(self) -> str:
        if self.sample_count <= 1:
            return BADGE_RUNNING
        note = f"sample {self.live_sample + 1} of {self.sample_count}"
        if self.live_swapped:
            note += ' · order swapped: its "A" is response B'
        return BADGE_RUNNING.replace("Judging…", f"Judging… {safe_text(note)}")

    def _badge_detail(self) -> str:
        parts: list[str] = []
        mean = self.aggregation == Aggregation.MEAN.value
        winners = [s for s in self.samples if s.verdict == self.verdict]
        probabilities = [s.probability for s in winners if s.probability is not None]
        if mean and self.probability is not None:
            parts.append(f"p = {self.probability:.2f}")
        elif not mean and probabilities:
            parts.append(f"p = {sum(probabilities) / len(probabilities):.2f}")
        if len(self.samples) > 1:
            votes = " · ".join(f"{k} {v}" for k, v in sorted(self.votes.items()))
            if mean and self.margin is not None:
                evidence = EVIDENCE.get(self.protocol, "evidence")
                parts.append(f"mean of {len(self.samples)}: {evidence} {self.margin:+.2f}")
                parts.append(f"stated: {votes}")
            else:
                parts.append(f"vote of {len(self.samples)}: {votes}")
        else:
            sources = {s.source for s in self.samples} - {"none", ""}
            parts.append(f"source: {', '.join(sorted(sources)) or 'none'}")
            if self.samples and self.verdict == "none":
                parts.append(f"status: {self.samples[0].status}")
        if self.position_consistent is not None:
            parts.append("same in both orders" if self.position_consistent else "flips with order")
        if self.stored:
            parts.append("stored")
        return safe_text(" · ".join(parts))

    def samples_html(self) -> str:
        """A row per sample when there is more than one (k > 1 or swap), else nothing.

        Each row says what the judge stated in the order it saw ("said"), what that means in
        the pair's order, P(stated) and P(A); with swap, a line per order sums them up.
        """
        if self.sample_count <= 1 and len(self.samples) <= 1:
            return ""
        rows = "".join(
            f"<tr><td>{s.index + 1}</td><td>{'swapped' if s.swapped else 'original'}</td>"
            f"<td>{safe_text(s.said)}</td><td>{safe_text(s.verdict)}</td>"
            f"<td>{_probability(s.probability)}</td><td>{_probability(s.probability_a)}</td>"
            f"<td>{safe_text(s.status)}</td></tr>"
            for s in self.samples
        )
        waiting = max(self.sample_count - len(self.samples), 0)
        note = f"<p class='grm-note'>{waiting} more sample(s) running…</p>" if waiting else ""
        return (
            f"{self._orders_html()}"
            '<table class="grm-samples"><thead><tr><th>#</th><th>order</th><th>said</th>'
            "<th>means</th><th>p</th><th>P(A)</th><th>status</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>{note}"
        )

    def _orders_html(self) -> str:
        """With swap: each order's stated verdicts and mean P(A), and whether they agree."""
        orders = [
            (name, [s for s in self.samples if s.swapped is swapped])
            for name, swapped in (("Original order", False), ("Swapped order", True))
        ]
        if not all(samples for _, samples in orders):
            return ""
        lines = [f"{name}: {_order_summary(samples)}" for name, samples in orders]
        if self.position_consistent is False:
            lines.append(
                "The judge's stated verdict flips with the order (position bias); "
                + (
                    "the decision weighs its probabilities from both orders."
                    if self.aggregation == Aggregation.MEAN.value
                    else "a vote counts both orders' verdicts, so they cancel out."
                )
            )
        return "".join(f"<p class='grm-note'>{safe_text(line)}</p>" for line in lines)

    def judgment_id(self) -> int | None:
        """The stored sample a label should point at: the first that gave the decision."""
        for sample in self.samples:
            if sample.verdict == self.verdict and sample.judgment_id is not None:
                return sample.judgment_id
        return next((s.judgment_id for s in self.samples if s.judgment_id is not None), None)


# What the mean rule's margin is, per protocol, for the badge.
EVIDENCE = {
    "pairwise": "log-odds A:B",
    "verifier": "log-odds of P(Yes) A:B",
    "pointwise": "score A-B",
}


def _order_summary(samples: list[SampleRow]) -> str:
    """One order's samples in a line: "said B, B (in the pair's order: A, A) · P(A) 0.62"."""
    said = ", ".join(s.said for s in samples)
    means = ", ".join(s.verdict for s in samples)
    text = f"said {said}" + (f" (in the pair's order: {means})" if said != means else "")
    chances = [s.probability_a for s in samples if s.probability_a is not None]
    if chances:
        text += f" · P(A) {sum(chances) / len(chances):.2f}"
    return text


def _body(text: str) -> str:
    return safe_markdown(text) if text.strip() else EMPTY_PANEL


def _verdict_name(verdict: str) -> str:
    # Any other value comes from a stored row, so it is shown as text, never as markup.
    return {"A": "A is better", "B": "B is better", "tie": "Tie"}.get(verdict, safe_text(verdict))


def _probability(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def apply_update(view: JudgeDisplay, update: Any) -> JudgeDisplay:
    """Fold one StreamUpdate into the display (mutates and returns `view`)."""
    view.sample_count = max(getattr(update, "sample_count", 1) or 1, 1)
    view.live_sample, view.live_swapped = len(view.samples), bool(update.swapped)
    view.principles = update.principles or ""
    view.critique = update.critique or ""
    view.verdict_text = update.verdict_text or ""
    if update.judgment is not None:
        view.samples.append(sample_from_judgment(update.judgment))
    if update.aggregate is not None:
        _take_aggregate(view, update.aggregate)
    return view


def _take_aggregate(view: JudgeDisplay, result: Any) -> None:
    """The decision and its evidence from a judges.types.AggregateJudgment."""
    view.verdict = _value(result.verdict)
    view.votes = dict(result.votes or {})
    view.position_consistent = result.position_consistent
    view.aggregation = result.aggregation
    view.margin = result.margin
    view.probability = result.verdict_probability
    if result.samples:
        view.protocol = result.samples[0].protocol


def sample_from_judgment(judgment: Any) -> SampleRow:
    """A finished judges.types.Judgment as a sample row."""
    return SampleRow(
        index=judgment.sample_index,
        swapped=judgment.swapped,
        verdict=_value(judgment.verdict),
        status=_value(judgment.status),
        probability=judgment.verdict_probability,
        source=judgment.verdict_source or "none",
        error=judgment.error,
    )


def attach_ids(view: JudgeDisplay, rows: Iterable[Mapping[str, Any]]) -> None:
    """Give the live samples the ids they were stored under (matched by index and order)."""
    ids = {(r["sample_index"], bool(r["swapped"])): r["id"] for r in rows}
    for sample in view.samples:
        sample.judgment_id = ids.get((sample.index, sample.swapped))


def display_from_rows(
    rows: list[Mapping[str, Any]], run: Mapping[str, Any] | None = None
) -> JudgeDisplay:
    """A stored judging run (rows of one run, first sample first) as a finished display.

    The decision is the stored `run`'s (storage's judgment_run row) when given. Rows without a
    run are decided by `judges.scaling.aggregate` over them, by the rule stored with them (rows
    stored before rules were recorded: the default rule).
    """
    if not rows:
        return JudgeDisplay()
    view = _stored_view(rows)
    if run is not None:
        _take_run(view, run)
        return view
    judgments = _judgments_of(rows)
    if judgments is None:  # a value no judge writes: shown as text, decided by a plain count
        votes = Counter(s.verdict for s in view.samples if s.verdict != "none")
        view.verdict, view.votes = majority(votes), dict(votes)
        return view
    rule = next((r["aggregation"] for r in rows if r.get("aggregation")), Aggregation.MEAN)
    _take_aggregate(view, aggregate(judgments, _known_rule(rule)))
    return view


def _stored_view(rows: list[Mapping[str, Any]]) -> JudgeDisplay:
    """The panels and the samples of stored rows, not yet decided."""
    first = rows[0]
    samples = [
        SampleRow(
            index=r["sample_index"],
            swapped=bool(r["swapped"]),
            verdict=r["verdict"],
            status=r["status"],
            probability=r.get("verdict_probability"),
            source=r.get("verdict_source") or "none",
            judgment_id=r["id"],
            error=r.get("error"),
        )
        for r in rows
    ]
    return JudgeDisplay(
        principles=first.get("principles") or "",
        critique=first.get("critique") or "",
        verdict_text=_stored_verdict_text(first),
        samples=samples,
        sample_count=len(samples),
        protocol=first.get("protocol") or "pairwise",
        stored=True,
    )


def _take_run(view: JudgeDisplay, run: Mapping[str, Any]) -> None:
    """The decision and its evidence from a stored judgment_run row."""
    view.verdict = str(run.get("verdict") or "none")
    view.votes = dict(run.get("votes") or {})
    view.position_consistent = run.get("position_consistent")
    view.aggregation = run.get("aggregation")
    view.margin = run.get("margin")
    view.probability = run.get("verdict_probability")
    view.protocol = run.get("protocol") or view.protocol


def _judgments_of(rows: list[Mapping[str, Any]]) -> list[Judgment] | None:
    """The stored rows as judges' Judgments (un-swapped, as stored); None if one is unreadable."""
    try:
        judgments = [
            Judgment(
                protocol=r.get("protocol") or "pairwise",
                prompt_version=r.get("prompt_version") or "",
                verdict=Verdict(r["verdict"]),
                status=Status(r["status"]),
                scores=_scores(r),
                verdict_probability=r.get("verdict_probability"),
                verdict_source=r.get("verdict_source") or "none",
                swapped=bool(r["swapped"]),
                sample_index=r["sample_index"],
                pair_id=r.get("pair_id"),
            )
            for r in rows
        ]
    except (KeyError, ValueError):
        return None
    if len({(j.protocol, j.pair_id) for j in judgments}) > 1:
        return None
    return judgments


def _scores(row: Mapping[str, Any]) -> tuple[float, float] | None:
    a, b = row.get("score_a"), row.get("score_b")
    return (float(a), float(b)) if a is not None and b is not None else None


def _known_rule(rule: Any) -> Aggregation:
    try:
        return Aggregation(rule)
    except ValueError:
        return Aggregation.MEAN


def majority(votes: Counter) -> str:
    """The most voted verdict; "none" when nobody voted; "tie" when A and B draw."""
    if not votes:
        return "none"
    ranked = votes.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return "tie"
    return ranked[0][0]


def _stored_verdict_text(row: Mapping[str, Any]) -> str:
    verdict = row.get("verdict") or "none"
    scores = ""
    if row.get("score_a") is not None and row.get("score_b") is not None:
        scores = f" (scores A {row['score_a']:g}, B {row['score_b']:g})"
    return f"Verdict: {verdict}{scores}"


def _value(value: Any) -> str:
    return str(getattr(value, "value", value))

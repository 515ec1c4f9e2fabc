"""What the Label tab shows of a judgment: three live panels, the verdict badge, the samples.

Works from the live `StreamUpdate`s of `Services.stream_pair_judgment` and from judgment rows
stored earlier, so a pair judged by a batch run opens with its reasoning already on screen.
Every text the judge wrote goes through `render.safe_markdown`: judge output is untrusted too.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

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
        winners = [s for s in self.samples if s.verdict == self.verdict]
        probabilities = [s.probability for s in winners if s.probability is not None]
        if probabilities:
            parts.append(f"p = {sum(probabilities) / len(probabilities):.2f}")
        if len(self.samples) > 1:
            votes = " · ".join(f"{k} {v}" for k, v in sorted(self.votes.items()))
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
        """A row per sample when there is more than one (k > 1 or swap), else nothing."""
        if self.sample_count <= 1 and len(self.samples) <= 1:
            return ""
        rows = "".join(
            f"<tr><td>{s.index + 1}</td><td>{'swapped' if s.swapped else 'original'}</td>"
            f"<td>{safe_text(s.verdict)}</td><td>{_probability(s.probability)}</td>"
            f"<td>{safe_text(s.status)}</td></tr>"
            for s in self.samples
        )
        waiting = max(self.sample_count - len(self.samples), 0)
        note = f"<p class='grm-note'>{waiting} more sample(s) running…</p>" if waiting else ""
        return (
            '<table class="grm-samples"><thead><tr><th>#</th><th>order</th><th>verdict</th>'
            f"<th>p</th><th>status</th></tr></thead><tbody>{rows}</tbody></table>{note}"
        )

    def judgment_id(self) -> int | None:
        """The stored sample a label should point at: the first that gave the decision."""
        for sample in self.samples:
            if sample.verdict == self.verdict and sample.judgment_id is not None:
                return sample.judgment_id
        return next((s.judgment_id for s in self.samples if s.judgment_id is not None), None)


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
        aggregate = update.aggregate
        view.verdict = _value(aggregate.verdict)
        view.votes = dict(aggregate.votes or {})
        view.position_consistent = aggregate.position_consistent
    return view


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


def display_from_rows(rows: list[Mapping[str, Any]]) -> JudgeDisplay:
    """A stored judging run (rows of one run, first sample first) as a finished display."""
    if not rows:
        return JudgeDisplay()
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
    votes = Counter(s.verdict for s in samples if s.verdict != "none")
    view = JudgeDisplay(
        principles=first.get("principles") or "",
        critique=first.get("critique") or "",
        verdict_text=_stored_verdict_text(first),
        samples=samples,
        sample_count=len(samples),
        verdict=majority(votes),
        votes=dict(votes),
        stored=True,
    )
    view.position_consistent = _consistency(samples)
    return view


def majority(votes: Counter) -> str:
    """The most voted verdict; "none" when nobody voted; "tie" when A and B draw."""
    if not votes:
        return "none"
    ranked = votes.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return "tie"
    return ranked[0][0]


def _consistency(samples: list[SampleRow]) -> bool | None:
    originals = {s.index: s.verdict for s in samples if not s.swapped}
    swapped = {s.index: s.verdict for s in samples if s.swapped}
    compared = [
        (originals[i], swapped[i])
        for i in originals.keys() & swapped.keys()
        if "none" not in (originals[i], swapped[i])
    ]
    return all(a == b for a, b in compared) if compared else None


def _stored_verdict_text(row: Mapping[str, Any]) -> str:
    verdict = row.get("verdict") or "none"
    scores = ""
    if row.get("score_a") is not None and row.get("score_b") is not None:
        scores = f" (scores A {row['score_a']:g}, B {row['score_b']:g})"
    return f"Verdict: {verdict}{scores}"


def _value(value: Any) -> str:
    return str(getattr(value, "value", value))

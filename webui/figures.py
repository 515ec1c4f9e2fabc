"""Figures as people read them: evaluation reports side by side, a training run's progress in
one line. Plain text, no UI library: the CLI and the web app both use it."""

from __future__ import annotations

from typing import Any

METRIC_FIGURES = [
    ("accuracy", "accuracy"),
    ("accuracy 95% CI", "ci"),
    ("Cohen's kappa", "kappa"),
    ("position consistency", "position_consistency"),
    ("no-verdict rate", "no_verdict_rate"),
    ("pairs scored", "n"),
]


def metric_value(metrics: dict[str, Any] | None, key: str) -> str:
    """One figure of an evaluation report, formatted for a table ("-" when absent)."""
    metrics = metrics or {}
    if key == "ci":
        low, high = metrics.get("ci_low"), metrics.get("ci_high")
        return "-" if low is None or high is None else f"[{low:.3f}, {high:.3f}]"
    value = metrics.get(key)
    if isinstance(value, dict):  # position consistency
        value = value.get("rate")
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


def metric_rows(
    *reports: dict[str, Any] | None, names: tuple[str, ...] = ("before", "after")
) -> list[dict[str, str]]:
    """Evaluation reports side by side: one row per figure, one column per report."""
    return [
        {"figure": title, **{n: metric_value(r, key) for n, r in zip(names, reports, strict=True)}}
        for title, key in METRIC_FIGURES
    ]


def paired_rows(paired: dict[str, Any] | None) -> list[dict[str, str]]:
    """The before/after difference on the same held-out pairs (judges.metrics.paired_comparison)
    as rows under metric_rows' table: in the "after" column, "before" left blank."""
    if not paired:
        return []
    low, high = paired["difference_ci_low"], paired["difference_ci_high"]
    rows = [
        ("difference in accuracy (paired)", f"{paired['difference']:+.3f}"),
        ("difference 95% CI (bootstrap)", f"[{low:+.3f}, {high:+.3f}]"),
        ("McNemar exact p", f"{paired['p_value']:.3g}"),
    ]
    return [{"figure": title, "before": "", "after": value} for title, value in rows]


def comparison_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """Two judge setups' figures on the same labels (services.comparing), one row per figure,
    columns "A" and "B"."""
    a, b = report["a"], report["b"]

    def both(format_one) -> dict[str, str]:
        return {"A": format_one(a), "B": format_one(b)}

    rows = [
        ("accuracy", lambda x: _fixed(x["accuracy"])),
        ("  95% interval", lambda x: f"{_fixed(x['ci_low'])}-{_fixed(x['ci_high'])}"),
        ("cohen's kappa", lambda x: _fixed(x["kappa"])),
        ("no verdict", lambda x: str(x["no_verdict"])),
        ("position consistency", lambda x: _fixed(x["position_consistency"]["rate"])),
        ("judged now / reused", lambda x: f"{x['judged_now']} / {x['reused']}"),
    ]
    return [{"figure": title, **both(format_one)} for title, format_one in rows]


def mcnemar_line(report: dict[str, Any]) -> str:
    test = report["mcnemar"]
    return (
        f"McNemar exact: only A right {test['only_first']}, only B right {test['only_second']}, "
        f"p = {test['p_value']:.4g}"
    )


def _fixed(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def progress_line(run: dict) -> str:
    """One line for a run's progress: phase, step, loss, examples/s, time left."""
    p = run.get("progress") or {}
    phase = p.get("phase", run["status"])
    parts = [f"run {run['id']} {run['status']}", phase]
    if phase == "training" and p.get("max_steps"):
        parts.append(f"step {p.get('step', 0)}/{p['max_steps']}")
        if p.get("loss") is not None:
            parts.append(f"loss {p['loss']:.4f}")
        if p.get("eta_s") is not None:
            parts.append(f"{p['eta_s']:.0f} s left")
    elif p.get("total") and str(phase).startswith("evaluating"):
        parts.append(f"{p.get('done', 0)}/{p['total']} pairs")
    return "  ".join(parts)

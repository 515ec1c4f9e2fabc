"""The copied-from-prompt share: table-tested on the v2 example a small judge copied, own words,
quoted pair text, and runs at the edge of the minimum length."""

from __future__ import annotations

import pytest

from judges.copying import copied_share, template_runs
from judges.prompts import get_prompt

V2 = get_prompt("pairwise-v2")
V2_EXAMPLE = (
    "Principles: Follow the instruction exactly. Be correct.\n"
    "Critique: Response A is correct but ignores the word limit. Response B is correct and "
    "short.\nVerdict: [[C]] for a tie."
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0.0),
        ("Principles: Bananas are yellow and sweet.\nVerdict: [[A]]", 0.0),
        # v2's own example, verbatim: every word is in a long run.
        (V2.user.split("Example:\n", 1)[1], 1.0),
        # Five template words in a row are not a run; six are.
        ("is correct but ignores the", 0.0),
        ("is correct but ignores the word", 1.0),
        ("apples. is correct but ignores the word pears", 6 / 8),
    ],
)
def test_copied_share(text: str, expected: float) -> None:
    assert copied_share(text, V2) == pytest.approx(expected)


def test_what_the_small_judge_wrote_with_v2_is_mostly_copied() -> None:
    # 28 words; only its verdict line ("[[C]] for a tie.") is not the example's.
    assert copied_share(V2_EXAMPLE, V2) == pytest.approx(24 / 28)  # all but "c for a tie"


def test_the_pairs_own_text_is_not_template_text() -> None:
    # Placeholders are not template words: a judge quoting the question copies nothing.
    runs = template_runs(V2)
    assert not any("prompt" in run and "response_a" in run for run in runs)
    quoted = "The question asks: name three rivers in Europe that flow into the sea."
    assert copied_share(quoted, V2) == 0.0


def test_v3_has_no_example_to_copy() -> None:
    v3 = get_prompt("pairwise-v3")
    assert copied_share(V2_EXAMPLE, v3) < 0.2  # only "Response A/B is better"-like runs remain

"""Safe display of untrusted text and the small web-app helpers that need no server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from exact_text_cases import EXACT_CASES, rendered_text, squashed
from markup import elements

from webui.common import annotator_of, check_name
from webui.judge_view import JudgeDisplay, display_from_rows, majority
from webui.render import (
    HIDDEN_CHARS,
    MAX_DISPLAY_CHARS,
    chat_html,
    exact_html,
    panel,
    prompt_views,
    safe_markdown,
    text_views,
    visible_text,
)

HOSTILE = [
    ("script", "<script>window.__pwned=1</script>"),
    ("img onerror", '<img src=x onerror="window.__pwned=1">'),
    ("svg onload", "<svg onload=alert(1)></svg>"),
    ("iframe", '<iframe src="http://127.0.0.1:9/x"></iframe>'),
    ("markdown image", "![cat](http://127.0.0.1:9/cat.png)"),
    ("reference image", "![cat][r]\n\n[r]: http://127.0.0.1:9/cat.png"),
    ("javascript link", "[click](javascript:alert(1))"),
    ("javascript link upper", "[click](JaVaScRiPt:alert(1))"),
    ("javascript autolink", "<javascript:alert(1)>"),
    ("data link", "[x](data:text/html;base64,PHNjcmlwdD4=)"),
    ("attribute break-out", '[x](https://a.example/" onmouseover="alert(1))'),
    ("style tag", "<style>body{display:none}</style>"),
    ("html entity script", "&lt;script&gt;alert(1)&lt;/script&gt;"),
]


def _tags(html: str) -> list[str]:
    return [tag for tag, _ in elements(html)]


def assert_inert(html: str) -> None:
    """No element that runs or fetches, no handler attribute, only http(s)/mailto links."""
    for tag, attrs in elements(html):
        assert tag not in {"script", "img", "svg", "iframe", "style", "object", "embed", "link"}
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        assert "src" not in attrs and "style" not in attrs
        href = (attrs.get("href") or "https:").strip().lower()
        assert href.startswith(("https:", "http:", "mailto:")), href


@pytest.mark.parametrize("name,text", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_markdown_renders_as_inert_text(name: str, text: str) -> None:
    assert_inert(safe_markdown(text))


def test_script_text_stays_visible_as_text() -> None:
    html = safe_markdown("<script>window.__pwned=1</script>")
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html


def test_remote_image_becomes_text_naming_its_address() -> None:
    html = safe_markdown("![diagram](http://example.com/d.png)")
    assert "<img" not in html
    assert "[image: diagram — http://example.com/d.png]" in html


def test_http_links_stay_links_that_open_safely() -> None:
    html = safe_markdown("[docs](https://example.com/a)")
    assert 'href="https://example.com/a"' in html
    assert 'rel="noopener noreferrer nofollow"' in html


def test_code_blocks_keep_angle_brackets_readable() -> None:
    html = safe_markdown("```c\n#include <stdio.h>\n```")
    assert "#include &lt;stdio.h&gt;" in html  # shown as <stdio.h>, not double-escaped


@pytest.mark.parametrize("char", ["\u202e", "\u200b", "\u2066", "\ufeff"])
def test_invisible_and_bidi_characters_are_shown_as_codes(char: str) -> None:
    html = safe_markdown(f"pay{char}lap")
    assert char not in html
    assert f"[U+{ord(char):04X}]" in html


def test_lone_surrogates_and_nul_cannot_break_the_page() -> None:
    html = safe_markdown("a\ud800b\x00c")
    html.encode("utf-8")  # would raise on a lone surrogate
    assert "\x00" not in html


def test_huge_response_is_cut_with_a_note() -> None:
    html = safe_markdown("x" * 1_000_000)
    assert len(html) < 100_000
    assert "Showing the first" in html


def test_deeply_nested_markdown_renders() -> None:
    html = safe_markdown(">" * 5000 + " deep" + "\n" + "- " * 3000 + "list")
    assert "deep" in html


def test_chat_turns_are_shown_one_block_per_turn_with_roles() -> None:
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi <b>there</b>"},
        {"role": "assistant", "content": "Hello."},
    ]
    html = chat_html("", turns)
    assert html.count('class="grm-turn') == 3
    assert "grm-role-user" in html and "&lt;b&gt;there&lt;/b&gt;" in html


def test_role_names_cannot_inject_attributes() -> None:
    assert_inert(chat_html("", [{"role": '"><img src=x onerror=alert(1)>', "content": "x"}]))


def test_auth_user_wins_over_a_name_sent_by_the_page() -> None:
    request = SimpleNamespace(username="alice")
    assert annotator_of(request, "mallory") == "alice"
    assert annotator_of(SimpleNamespace(username=None), "bob") == "bob"
    assert annotator_of(None, "") is None


@pytest.mark.parametrize("raw", ["", "   ", "a" * 81, "bob\u200b", "x\ny"])
def test_bad_names_are_refused_with_a_reason(raw: str) -> None:
    with pytest.raises(ValueError):
        check_name(raw)


def test_names_are_stripped() -> None:
    assert check_name("  Ana  ") == "Ana"


def test_judge_output_with_html_is_inert_in_every_panel() -> None:
    view = JudgeDisplay(
        principles="<img src=x onerror=alert(1)>",
        critique="<script>alert(2)</script>",
        verdict_text="[[A]] <a href=javascript:alert(3)>x</a>",
    )
    for html in view.panels():
        assert_inert(html)
        assert "<a " not in html


def test_badge_says_no_verdict_when_the_judge_gave_none() -> None:
    view = display_from_rows([_row(1, "none", status="no_verdict")])
    assert 'data-state="none"' in view.badge()
    assert "no verdict" in view.badge()


def test_badge_shows_verdict_probability_and_source() -> None:
    view = display_from_rows([_row(1, "B", p=0.73, source="logprobs")])
    badge = view.badge()
    assert 'data-verdict="B"' in badge and "p = 0.73" in badge and "logprobs" in badge


def test_swapped_samples_show_the_vote_and_consistency() -> None:
    rows = [_row(1, "A", index=0), _row(2, "A", index=0, swapped=True)]
    view = display_from_rows(rows)
    assert view.verdict == "A"
    assert "vote of 2" in view.badge() and "same in both orders" in view.badge()
    assert view.samples_html().count("<tr>") == 3  # header + 2 samples
    assert view.judgment_id() == 1


def test_majority_draw_between_a_and_b_is_a_tie() -> None:
    from collections import Counter

    assert majority(Counter({"A": 2, "B": 2})) == "tie"
    assert majority(Counter()) == "none"
    assert majority(Counter({"B": 2, "A": 1})) == "B"


def _row(
    id_: int,
    verdict: str,
    *,
    index: int = 0,
    swapped: bool = False,
    p: float | None = None,
    source: str = "text",
    status: str = "complete",
) -> dict:
    return {
        "id": id_,
        "sample_index": index,
        "swapped": swapped,
        "verdict": verdict,
        "status": status,
        "verdict_probability": p,
        "verdict_source": source,
        "principles": "be helpful",
        "critique": "A answers",
        "score_a": None,
        "score_b": None,
    }


def test_live_swap_stream_shows_each_sample_then_the_vote() -> None:
    from judges.judge import StreamUpdate
    from judges.types import AggregateJudgment, Judgment, Status, Verdict
    from webui.judge_view import apply_update

    def sample(swapped: bool) -> Judgment:
        return Judgment(
            protocol="pairwise", prompt_version="pairwise-v1", verdict=Verdict.A,
            status=Status.COMPLETE, verdict_probability=0.8, verdict_source="text",
            swapped=swapped,
        )  # fmt: skip

    def update(swapped: bool, **end) -> StreamUpdate:
        return StreamUpdate(None, "Be exact.", "A is exact.", "[[A]]", 0, swapped, 2, **end)

    view = JudgeDisplay(running=True)
    apply_update(view, update(False))
    assert "sample 1 of 2" in view.badge() and view.samples == []
    apply_update(view, update(False, judgment=sample(False)))
    apply_update(view, update(True))
    assert "its &quot;A&quot; is response B" in view.badge()
    final = AggregateJudgment(
        Verdict.A, [sample(False), sample(True)], {"A": 2}, position_consistent=True
    )
    apply_update(view, update(True, judgment=sample(True), aggregate=final))
    badge = view.badge()
    assert 'data-verdict="A"' in badge and "vote of 2: A 2" in badge
    assert "same in both orders" in badge
    rows = view.samples_html()
    assert rows.count("<tr>") == 3 and "swapped" in rows and "original" in rows


# --- issue 15: the exact view is the stored text; the rendered view keeps the characters -------


@pytest.mark.parametrize("name,text,rendered", EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_exact_view_holds_the_stored_string_character_for_character(
    name: str, text: str, rendered: str | None
) -> None:
    markup = exact_html(text)
    assert_inert(markup)
    # Python's parser keeps the newline a browser drops right after <pre> (checked in Chromium
    # by tests/test_browser_exact_text.py).
    assert visible_text(markup) == "\n" + text
    for char in set(HIDDEN_CHARS.findall(text)):
        assert char not in markup  # in the DOM by character reference, shown by its code
        assert f'data-code="[U+{ord(char):04X}]"' in markup


@pytest.mark.parametrize("name,text,rendered", EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_rendered_view_loses_no_character_outside_the_markup_it_renders(
    name: str, text: str, rendered: str | None
) -> None:
    views, differs = text_views(text)
    rendered_part = views.split('<div class="grm-view-exact">')[0]
    assert_inert(rendered_part)
    assert squashed(visible_text(rendered_part)) == rendered_text(text, rendered)
    assert differs is (rendered is not None)  # the marker: rendering hides characters
    assert panel("Response A", views, differs=differs).count("grm-differs") == int(differs)


@pytest.mark.parametrize(
    "text,tag",
    [
        ("**bold** text", "<strong>bold</strong>"),
        ("*em* and _em_", "<em>em</em> and <em>em</em>"),
        ("a `code*span*`", "<code>code*span*</code>"),
        ("$x*y$ and $z*w$", '<span class="grm-math">$x*y$</span>'),
        ("| a | b |\n|---|---|\n| 1 | 2 |", "<td>1</td>"),
    ],
)
def test_deliberate_markdown_still_renders(text: str, tag: str) -> None:
    assert tag in safe_markdown(text)


def test_a_chat_prompt_carries_both_views_for_every_turn_and_one_marker_flag() -> None:
    turns = [{"role": "user", "content": "2*3*4"}, {"role": "assistant", "content": "**24**"}]
    views, differs = prompt_views("", turns)
    assert views.count('class="grm-view-exact"') == 2 and differs
    assert prompt_views("", turns[:1])[1] is False


def test_a_huge_text_is_cut_in_the_exact_view_too_and_says_so() -> None:
    markup = exact_html("y" * (MAX_DISPLAY_CHARS + 5))
    assert visible_text(markup).count("y") == MAX_DISPLAY_CHARS
    assert f"Showing the first {MAX_DISPLAY_CHARS:,}" in markup

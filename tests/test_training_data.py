"""Training data built from known judgments and labels is exactly what the design says."""

from __future__ import annotations

import dataclasses
import json

import pytest

from judges.prompts import truncate_middle
from judges.split import BY_PAIR, BY_PROMPT, Split, split_pairs, split_unit
from judges.swap_text import swap_labels_in_text, swap_scores_in_text
from judges.training_data import (
    DataConfig,
    JudgmentRecord,
    TrainingRecord,
    build_training_data,
    parse_records,
    target_format,
)
from judges.truncation import CHARACTERS, allocate_budget, truncate_pair, truncate_to_fit
from judges.types import ChatTurn, PairInput, Verdict

PAIRWISE = target_format("pairwise")
RIGHT_A = (
    "Principles: be correct.\nCritique: Response A is right, Response B is wrong.\nVerdict: [[A]]"
)
RIGHT_A_MIRROR = (
    "Principles: be correct.\nCritique: Response B is right, Response A is wrong.\nVerdict: [[B]]"
)
WRONG_B = "Critique: Response B is longer, so better.\nVerdict: [[B]]"
WRONG_B_MIRROR = "Critique: Response A is longer, so better.\nVerdict: [[A]]"


def messages(pair: PairInput) -> list[dict[str, str]]:
    """A stand-in protocol prompt that shows which response is first."""
    text = f"Q: {pair.prompt_text()}\nA: {pair.response_a}\nB: {pair.response_b}"
    return [{"role": "user", "content": text}]


def record(pair_id: int = 1, label: str = "A", judgments=(), **extra) -> dict:
    return {
        "pair_id": pair_id,
        "prompt": f"question {pair_id}",
        "response_a": f"first answer {pair_id}",
        "response_b": f"second answer {pair_id}",
        "label": label,
        "judgments": list(judgments),
        **extra,
    }


def judgment(verdict: str, raw_text: str, **extra) -> dict:
    return {"verdict": verdict, "raw_text": raw_text, "protocol": "pairwise", **extra}


def build(records, **kwargs):
    kwargs.setdefault("target_format", PAIRWISE)
    return build_training_data(parse_records(records), messages, **kwargs)


ORIGINAL = messages(PairInput("question 1", "first answer 1", "second answer 1"))
SWAPPED = messages(PairInput("question 1", "second answer 1", "first answer 1"))


def test_matching_judgment_is_positive_and_contradicting_one_is_negative():
    data = build(
        [
            record(
                1,
                "A",
                [judgment("A", RIGHT_A, judgment_id=10), judgment("B", WRONG_B, judgment_id=11)],
            )
        ]
    )

    assert [(e.source, e.swapped, e.prompt, e.target, e.verdict) for e in data.sft] == [
        ("judgment", False, ORIGINAL, RIGHT_A, Verdict.A),
        ("judgment", True, SWAPPED, RIGHT_A_MIRROR, Verdict.B),
    ]
    assert [e.judgment_id for e in data.sft] == [10, 10]
    assert [(e.swapped, e.prompt, e.chosen, e.rejected) for e in data.preference] == [
        (False, ORIGINAL, RIGHT_A, WRONG_B),
        (True, SWAPPED, RIGHT_A_MIRROR, WRONG_B_MIRROR),
    ]
    assert [(e.chosen_verdict, e.rejected_verdict) for e in data.preference] == [
        (Verdict.A, Verdict.B),
        (Verdict.B, Verdict.A),
    ]
    assert data.stats["positives_judgment"] == 1 and data.stats["negatives"] == 1


def test_judgment_made_in_swapped_order_keeps_its_text_with_the_swapped_prompt():
    # Shown B-first, the judge wrote "[[B]]" about what is the pair's response A: stored as A.
    raw = "Critique: Response B is right.\nVerdict: [[B]]"
    data = build([record(1, "A", [judgment("A", raw, swapped=True)])])
    assert [(e.swapped, e.prompt, e.target, e.verdict) for e in data.sft] == [
        (True, SWAPPED, raw, Verdict.B),
        (False, ORIGINAL, "Critique: Response A is right.\nVerdict: [[A]]", Verdict.A),
    ]


def test_negative_from_the_other_order_is_mirrored_to_match_the_chosen_prompt():
    wrong_shown_swapped = "Critique: Response A is longer.\nVerdict: [[A]]"  # = original B
    data = build(
        [record(1, "A", [judgment("A", RIGHT_A), judgment("B", wrong_shown_swapped, swapped=True)])]
    )
    first = data.preference[0]
    assert (first.swapped, first.chosen, first.rejected) == (
        False,
        RIGHT_A,
        "Critique: Response B is longer.\nVerdict: [[B]]",
    )
    assert data.preference[1].rejected == wrong_shown_swapped


def test_human_critique_is_a_positive_with_the_label_verdict_appended():
    def sample_more(pairs, n):
        raise AssertionError("a pair with a human critique needs no more samples")

    rec = record(1, "B", [judgment("A", RIGHT_A)], corrected_critique="Response B obeys the limit.")
    data = build([rec], sample_more=sample_more)
    expected = "Critique: Response B obeys the limit.\nVerdict: [[B]]"
    assert [(e.source, e.target) for e in data.sft] == [
        ("human_critique", expected),
        ("human_critique", "Critique: Response A obeys the limit.\nVerdict: [[A]]"),
    ]
    assert data.preference[0].chosen == expected and data.preference[0].rejected == RIGHT_A


def test_human_critique_that_states_the_verdict_is_kept_as_written():
    text = "Critique: B is right.\nVerdict: [[B]]"
    data = build([record(1, "B", corrected_critique=text)])
    assert data.sft[0].target == text


def test_rejection_sampling_asks_only_for_pairs_without_positive_and_keeps_agreeing_samples():
    calls = []

    def sample_more(pairs, n):
        calls.append(([p.pair_id for p in pairs], n))
        return [[judgment("B", WRONG_B), judgment("A", RIGHT_A), judgment("A", RIGHT_A)]]

    records = [
        record(1, "A", [judgment("B", WRONG_B)]),
        record(2, "A", [judgment("A", RIGHT_A)]),
    ]
    data = build(records, sample_more=sample_more, config=DataConfig(rft_samples=3))
    assert calls == [([1], 3)]
    pair_1 = [e for e in data.sft if e.pair_id == 1]
    assert [(e.source, e.target) for e in pair_1] == [
        ("rejection_sample", RIGHT_A),
        ("rejection_sample", RIGHT_A_MIRROR),
    ]  # the duplicate sample is kept once
    assert data.stats["rft_pairs"] == 1 and data.stats["rft_samples"] == 3
    assert data.stats["positives_rejection_sample"] == 1


def test_sample_more_must_answer_every_pair():
    with pytest.raises(ValueError, match="returned 0 lists for 1 pairs"):
        build([record(1, "A")], sample_more=lambda pairs, n: [])


def test_no_positive_at_all_falls_back_to_a_verdict_only_target():
    data = build([record(1, "A", [judgment("B", WRONG_B)])])
    assert [(e.source, e.target, e.verdict) for e in data.sft] == [
        ("verdict_only", "Verdict: [[A]]", Verdict.A),
        ("verdict_only", "Verdict: [[B]]", Verdict.B),
    ]
    assert [(e.chosen, e.rejected) for e in data.preference] == [
        ("Verdict: [[A]]", "Verdict: [[B]]"),
        ("Verdict: [[B]]", "Verdict: [[A]]"),
    ]
    assert data.stats["verdict_only"] == 1


def test_verdict_only_tie_is_contrasted_with_the_verdict_the_judge_gave():
    wrong = "Critique: Response A wins.\nVerdict: [[A]]"  # shown swapped: that is original B
    data = build([record(1, "tie", [judgment("B", wrong, swapped=True)])])
    assert [(e.chosen, e.rejected) for e in data.preference] == [
        ("Verdict: [[C]]", "Verdict: [[B]]"),
        ("Verdict: [[C]]", "Verdict: [[A]]"),
    ]


def test_unlabeled_unjudged_pair_still_gets_verdict_only_targets_both_ways():
    data = build([record(1, "B")])
    assert [e.target for e in data.sft] == ["Verdict: [[B]]", "Verdict: [[A]]"]


@pytest.mark.parametrize(
    ("extra", "counts_as"),
    [
        ({"status": "error"}, "ignored"),
        ({"protocol": "pointwise"}, "ignored"),
        ({"raw_text": "  "}, "ignored"),
        ({"status": "truncated"}, "neither"),  # right verdict but cut off: not a model answer
    ],
)
def test_judgments_that_cannot_teach_are_left_out(extra, counts_as):
    data = build([record(1, "A", [judgment("A", RIGHT_A) | extra])])
    assert [e.source for e in data.sft] == ["verdict_only", "verdict_only"]
    assert data.stats["judgments_ignored"] == (1 if counts_as == "ignored" else 0)
    assert data.stats["negatives"] == 0


def test_no_verdict_output_is_a_negative():
    rambling = "Critique: both responses have merit."
    data = build(
        [record(1, "A", [judgment("A", RIGHT_A), judgment("none", rambling, status="no_verdict")])]
    )
    assert [(e.chosen, e.rejected, e.rejected_verdict) for e in data.preference] == [
        (RIGHT_A, rambling, Verdict.NONE),
        (RIGHT_A_MIRROR, rambling, Verdict.NONE),
    ]


def test_target_whose_text_does_not_state_its_verdict_is_dropped():
    # e.g. a verdict that came from log-probabilities while the text said nothing
    data = build([record(1, "A", [judgment("A", "Critique: hard to say.")])])
    assert data.stats["targets_dropped"] == 1
    assert [e.source for e in data.sft] == ["verdict_only", "verdict_only"]


def test_duplicates_are_kept_once_and_at_most_max_per_pair():
    other = RIGHT_A.replace("be correct", "be exact")
    third = RIGHT_A.replace("be correct", "be brief")
    js = [
        judgment("A", RIGHT_A),
        judgment("A", RIGHT_A + "  "),
        judgment("A", other),
        judgment("A", third),
    ]
    data = build([record(1, "A", js)], config=DataConfig(max_per_pair=2))
    assert [e.target for e in data.sft if not e.swapped] == [RIGHT_A, other]


def test_dpo_pairs_cycle_the_shorter_side_up_to_max_per_pair():
    other = RIGHT_A.replace("be correct", "be exact")
    js = [judgment("A", RIGHT_A), judgment("A", other), judgment("B", WRONG_B)]
    data = build([record(1, "A", js)], config=DataConfig(max_per_pair=3))
    assert [(e.chosen, e.rejected) for e in data.preference if not e.swapped] == [
        (RIGHT_A, WRONG_B),
        (other, WRONG_B),
    ]


def test_labels_that_pick_no_response_are_not_trained_on():
    data = build([record(1, "both_bad", [judgment("A", RIGHT_A)]), record(2, "skip")])
    assert data.sft == [] and data.preference == []
    assert data.stats["labels_not_trainable"] == 2


def test_swapped_copies_can_be_turned_off():
    data = build(
        [record(1, "A", [judgment("A", RIGHT_A)])], config=DataConfig(include_swapped=False)
    )
    assert [e.swapped for e in data.sft] == [False]


def test_rows_in_trl_formats():
    data = build([record(1, "A", [judgment("A", RIGHT_A), judgment("B", WRONG_B)])])
    assert data.sft_rows()[0] == {
        "prompt": ORIGINAL,
        "completion": [{"role": "assistant", "content": RIGHT_A}],
    }
    assert data.sft_rows("messages")[0] == {
        "messages": [*ORIGINAL, {"role": "assistant", "content": RIGHT_A}]
    }
    assert data.preference_rows()[1] == {
        "prompt": SWAPPED,
        "chosen": [{"role": "assistant", "content": RIGHT_A_MIRROR}],
        "rejected": [{"role": "assistant", "content": WRONG_B_MIRROR}],
    }


def test_prompts_are_truncated_before_the_protocol_sees_them():
    long = "start " + "x" * 500 + " finish"
    rec = record(1, "A") | {"response_a": long}
    data = build([rec], config=DataConfig(max_prompt_units=200))
    shown = data.sft[0].prompt[0]["content"]
    assert "start" in shown and "finish" in shown and "omitted" in shown
    assert "first answer" not in shown and len(shown) < 300


# ---------------------------------------------------------------- swapping text


@pytest.mark.parametrize(
    ("text", "swapped"),
    [
        ("Verdict: [[A]]", "Verdict: [[B]]"),
        ("[[ b ]]", "[[ a ]]"),
        ("[[C]] stays", "[[C]] stays"),
        ("Verdict: A", "Verdict: B"),
        ("Final verdict: **B**", "Final verdict: **A**"),
        ("Verdict: A close call, but B", "Verdict: A close call, but B"),  # not a verdict line
        ("Response A is better than Response B.", "Response B is better than Response A."),
        ("Assistant A's answer", "Assistant B's answer"),
        ("Responses A and B both", "Responses B and A both"),
        ("answers A, B or (A)", "answers B, A or (B)"),
        ("Output (a) beats Output (b)", "Output (b) beats Output (a)"),
        ("the answer a student gives", "the answer a student gives"),
        ("Response A and Bob", "Response B and Bob"),
        ("A is a letter; Alpha and Beta", "A is a letter; Alpha and Beta"),
        ("The first response beats the second one.", "The second response beats the first one."),
        ("First, the response", "First, the response"),
        ("FIRST ANSWER", "SECOND ANSWER"),
    ],
)
def test_swap_labels_in_text(text, swapped):
    assert swap_labels_in_text(text) == swapped
    assert swap_labels_in_text(swapped) == text  # swapping twice gives the text back


@pytest.mark.parametrize(
    ("text", "swapped"),
    [
        (
            "Analysis: Response A is vague.\nScores: \\boxed{7, 3}",
            "Analysis: Response B is vague.\nScores: \\boxed{3, 7}",
        ),
        ("Scores: 8, 2", "Scores: 2, 8"),
        ("I scored 7, 3 points", "I scored 7, 3 points"),
    ],
)
def test_swap_scores_in_text(text, swapped):
    assert swap_scores_in_text(text) == swapped


def test_pointwise_targets_swap_their_scores():
    fmt = target_format("pointwise")
    raw = "Analysis: Response A is right.\nScores: \\boxed{8, 2}"
    data = build_training_data(
        parse_records([record(1, "A", [judgment("A", raw, protocol="pointwise")])]),
        messages,
        DataConfig(protocol="pointwise"),
        fmt,
    )
    assert [(e.target, e.verdict) for e in data.sft] == [
        (raw, Verdict.A),
        ("Analysis: Response B is right.\nScores: \\boxed{2, 8}", Verdict.B),
    ]


def test_verifier_cannot_be_trained_on_pairwise_labels():
    with pytest.raises(ValueError, match="only 'pairwise' and 'pointwise'"):
        target_format("verifier")


# ---------------------------------------------------------------- truncation


def test_truncate_to_fit_in_characters_is_the_prompts_own_cut():
    text = "HEAD " + "m " * 300 + "TAIL"
    cut = truncate_to_fit(text, 100)
    assert cut == truncate_middle(text, 100) and len(cut) <= 100
    assert cut.startswith("HEAD") and cut.endswith("TAIL")
    assert "characters omitted" in cut


def test_truncate_to_fit_leaves_short_text_alone_and_hard_cuts_tiny_budgets():
    assert truncate_to_fit("short", 5) == "short"
    assert truncate_to_fit("x" * 50, 10) == "x" * 10
    assert truncate_to_fit("x" * 50, 0) == ""


@pytest.mark.parametrize("keep", [16, 20, 37, 60])
def test_truncate_to_fit_in_tokens_cuts_by_the_prompts_rule_within_the_budget(keep):
    def words(text: str) -> int:
        return len(text.split())

    text = " ".join(f"w{i}" for i in range(100))
    cut = truncate_to_fit(text, keep, words)
    assert words(cut) <= keep  # the marker's words are counted too
    head, marker, tail = cut.split("\n")
    assert head.startswith("w0 w1") and tail.endswith("w99")
    assert marker.endswith("characters omitted ...]")
    assert len(head) > len(tail)  # the prompt's rule: the head keeps about two thirds
    assert words(truncate_to_fit(text, 3, words)) <= 3  # no room for a marker: a hard cut


@pytest.mark.parametrize(
    ("lengths", "budget", "allowances"),
    [
        ([10, 10, 10], 100, [10, 10, 10]),
        ([10, 500, 1000], 310, [10, 150, 150]),
        ([100, 100], 51, [25, 26]),
        ([0, 40], 10, [0, 10]),
    ],
)
def test_allocate_budget_lets_short_texts_keep_everything(lengths, budget, allowances):
    result = allocate_budget(lengths, budget)
    assert result == allowances
    assert sum(result) <= budget


def test_truncate_pair_cuts_only_the_long_texts_and_fits_the_budget():
    pair = PairInput("short question?", "a" * 1000 + "END_A", "b" * 30, reference="ref")
    cut = truncate_pair(pair, 400, CHARACTERS)
    assert cut.prompt == "short question?" and cut.response_b == "b" * 30 and cut.reference == "ref"
    assert cut.response_a.endswith("END_A") and cut.response_a.startswith("aaa")
    assert sum(len(t) for t in (cut.prompt, cut.response_a, cut.response_b, cut.reference)) <= 400
    assert truncate_pair(pair, None) is pair


def test_truncate_pair_handles_chat_turns():
    turns = [ChatTurn("user", "u" * 300), ChatTurn("assistant", "ok"), ChatTurn("user", "last?")]
    cut = truncate_pair(PairInput(turns, "x" * 300, "y"), 200)
    assert [t.role for t in cut.prompt] == ["user", "assistant", "user"]
    assert cut.prompt[1].content == "ok" and cut.prompt[2].content == "last?"
    assert len(cut.prompt[0].content) < 300 and len(cut.response_a) < 300


# ---------------------------------------------------------------- split


def own_prompts(ids):
    """Items for split_pairs where every pair has a prompt of its own."""
    return [(pid, f"question {pid}") for pid in ids]


def test_split_is_deterministic_disjoint_and_complete():
    ids = list(range(1, 201))
    split = split_pairs(own_prompts(ids), 0.2, seed=3)
    assert split == split_pairs(list(reversed(own_prompts(ids))), 0.2, seed=3)
    assert set(split.train).isdisjoint(split.heldout)
    assert sorted(split.train + split.heldout) == ids
    assert 20 <= len(split.heldout) <= 60  # about 40
    assert split_pairs(own_prompts(ids), 0.2, seed=4).heldout != split.heldout
    assert split.as_record()["heldout"] == list(split.heldout)
    assert split.as_record()["seed"] == 3
    assert Split.from_record(json.loads(json.dumps(split.as_record()))) == split


def test_split_keeps_pairs_of_one_prompt_on_one_side():
    # MT-Bench's shape: 50 questions, 4 answer pairs each; a held-out question is never trained on.
    items = [(pid, f"question {pid // 4}") for pid in range(200)]
    split = split_pairs(items, 0.3, seed=1)
    prompt_of = dict(items)
    trained = {prompt_of[pid] for pid in split.train}
    held = {prompt_of[pid] for pid in split.heldout}
    assert trained.isdisjoint(held)
    assert len(held) >= 5 and len(trained) >= 20  # about 15 and 35 of the 50 questions
    assert sorted(split.train + split.heldout) == list(range(200))
    assert split.method == BY_PROMPT
    # A prompt pasted with stray spaces around it is the same question.
    for seed in range(10):
        sides = split_pairs([(1, " q "), (2, "q"), (3, "other")], 0.5, seed=seed)
        assert {1, 2} <= set(sides.train) or {1, 2} <= set(sides.heldout)


def test_split_of_labels_on_one_prompt_goes_a_pair_at_a_time():
    split = split_pairs([(pid, "the only question") for pid in range(1, 41)], 0.25, seed=0)
    assert split.method == BY_PAIR
    assert split.heldout == tuple(pid for pid in range(1, 41) if split_unit(str(pid), 0) < 0.25)
    assert 3 <= len(split.heldout) <= 20 and len(split.train) == 40 - len(split.heldout)


def test_split_stored_before_prompts_were_grouped_reads_back_as_the_pair_rule():
    old = {"train": [1, 2], "heldout": [3], "seed": 0, "heldout_share": 0.2}
    assert Split.from_record(old).method == BY_PAIR


def test_split_keeps_held_out_pairs_held_out_when_labels_grow():
    small = split_pairs(own_prompts(range(1, 101)), 0.25, seed=0)
    large = split_pairs(own_prompts(range(1, 401)), 0.25, seed=0)
    assert set(small.heldout) <= set(large.heldout)
    assert set(small.train) <= set(large.train)


def test_split_gives_each_side_a_prompt_when_it_can():
    for seed in range(20):
        split = split_pairs(own_prompts([1, 2]), 0.01, seed=seed)
        assert len(split.train) == 1 and len(split.heldout) == 1
    assert split_pairs(own_prompts([5]), 0.5).heldout in ((), (5,))
    assert split_pairs(own_prompts([1, 2, 3]), 0.0).heldout == ()


@pytest.mark.parametrize(
    ("items", "share", "message"),
    [([(1, "a"), (1, "b")], 0.2, "pair id 1 twice"), ([(1, "a")], 1.0, "\\[0, 1\\)")],
)
def test_split_refuses_bad_input(items, share, message):
    with pytest.raises(ValueError, match=message):
        split_pairs(items, share)


# ---------------------------------------------------------------- records


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"response_a": None}, "record 0 \\(pair 1\\): missing 'response_a'"),
        ({"label": "maybe"}, "label 'maybe' is not one of A, B, tie, both_bad, skip"),
        ({"pair_id": "7"}, "pair_id must be an integer"),
        ({"prompt": None}, "missing 'prompt'"),
        ({"judgments": [{"verdict": "X", "raw_text": "t"}]}, "judgment 0: verdict 'X'"),
        ({"prompt": [{"text": "hi"}]}, "prompt must be a text or a list of \\{role, content\\}"),
    ],
)
def test_parse_records_names_what_is_wrong(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_records([record(1) | bad])


def test_parse_records_refuses_two_labels_for_one_pair():
    with pytest.raises(ValueError, match="record 1: pair 1 appears twice"):
        parse_records([record(1), record(1)])


def test_parse_records_reads_chat_turns_and_optional_fields():
    rec = record(3, "tie") | {
        "prompt": [{"role": "user", "content": "hi"}],
        "reference": "ref",
        "category": "chat",
        "label_id": 9,
    }
    (item,) = parse_records([rec])
    assert isinstance(item, TrainingRecord)
    assert item.pair.prompt == [ChatTurn("user", "hi")] and item.pair.reference == "ref"
    assert (item.pair_id, item.verdict, item.category, item.label_id) == (3, Verdict.TIE, "chat", 9)


def test_a_record_reads_back_from_its_json_with_one_spelling_of_every_key():
    item = TrainingRecord(
        pair_id=4,
        label="B",
        prompt=[ChatTurn("user", "hi"), ChatTurn("assistant", "yes?")],
        response_a="a",
        response_b="b",
        reference="ref",
        category="chat",
        corrected_critique="B is right.",
        label_id=12,
        judgments=(JudgmentRecord(Verdict.A, "Verdict: [[A]]", swapped=True, judgment_id=30),),
    )
    as_json = json.loads(json.dumps(item.to_json()))
    assert set(as_json) == {f.name for f in dataclasses.fields(TrainingRecord)}
    assert set(as_json["judgments"][0]) == {f.name for f in dataclasses.fields(JudgmentRecord)}
    assert as_json["prompt"][0] == {"role": "user", "content": "hi"}
    assert TrainingRecord.from_json(as_json) == item
    assert parse_records([item, as_json | {"pair_id": 5}])[0] is item  # objects pass as they are


def test_negative_whose_text_states_no_verdict_is_kept_as_a_no_verdict_negative():
    # The stored verdict B was read from log-probabilities; the text itself decides nothing.
    silent = "Critique: Response B reads well."
    data = build([record(1, "A", [judgment("A", RIGHT_A), judgment("B", silent)])])
    assert [(e.rejected, e.rejected_verdict) for e in data.preference] == [
        (silent, Verdict.NONE),
        ("Critique: Response A reads well.", Verdict.NONE),
    ]
    assert data.stats["targets_dropped"] == 0

"""The answer features read what they are named after, on answers shaped like the data's."""

from __future__ import annotations

import time

from services.verifier.features import FEATURE_NAMES, answer_features

PROMPT = "Which gas makes up most of Earth's atmosphere?\nA. Oxygen\nB. Nitrogen\nC. Argon\nAnswer:"


def feature(answer: str, name: str, prompt: str = PROMPT) -> float:
    return float(answer_features(prompt, answer)[FEATURE_NAMES.index(name)])


def test_a_stated_final_answer_is_seen_in_the_forms_models_use() -> None:
    for answer in (
        "Nitrogen is 78% of the air. The answer is (B).",
        "So the final answer is **B**.",
        "Answer: B",
    ):
        assert feature(answer, "states_final_answer") == 1.0, answer
    assert feature("Nitrogen is 78% of the air, and oxygen is about 21% of", "states_final_answer") == 0.0


def test_refusals_and_hedges_are_flagged_and_plain_answers_are_not() -> None:
    assert feature("I'm sorry, but I can't help with that request.", "refuses") == 1.0
    assert feature("As an AI language model, I cannot browse the web.", "refuses") == 1.0
    assert feature("I'm not sure, but it might be nitrogen.", "hedges") == 1.0
    plain = "Nitrogen makes up about 78% of the atmosphere. The answer is (B)."
    assert feature(plain, "refuses") == 0.0
    assert feature(plain, "hedges") == 0.0


def test_looping_empty_and_cut_off_answers_are_flagged() -> None:
    assert feature("Let me check.\n" * 30, "repeated_lines") > 0.9
    assert feature("One line.\nAnother line.", "repeated_lines") == 0.0
    assert feature("   \n", "empty") == 1.0
    assert feature("Nitrogen, because the reaction of", "stops_mid_sentence") == 1.0
    assert feature("It is nitrogen.", "stops_mid_sentence") == 0.0


def test_length_features_grow_with_the_answer_and_shrink_with_the_prompt() -> None:
    short, long = answer_features(PROMPT, "B."), answer_features(PROMPT, "Because " * 200 + "B.")
    index = FEATURE_NAMES.index("log_answer_chars")
    assert long[index] > short[index]
    ratio = FEATURE_NAMES.index("log_answer_to_prompt")
    assert answer_features("x" * 5000, "B.")[ratio] < short[ratio]


def test_a_huge_answer_is_read_at_its_ends_only() -> None:
    huge = "I'm sorry, I cannot answer that." + " filler" * 150_000 + " The answer is (B)."
    started = time.perf_counter()
    values = answer_features(PROMPT, huge)
    assert time.perf_counter() - started < 1.0
    assert values[FEATURE_NAMES.index("refuses")] == 1.0
    assert values[FEATURE_NAMES.index("states_final_answer")] == 1.0

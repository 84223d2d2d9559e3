"""Find the target token t in a generated caption, as whole pieces of the generated span.

The paper's definition: the hidden state taken for a sample is the one at the *first generated
position whose next-token prediction is t*. We match on the generated ids only (never the prompt:
the authors' first public code matched the bare sentencepiece `▁` piece and so often picked a prompt
position), on whole pieces, as a whole word, case-insensitively:

1. decode the generated ids piece by piece to get each piece's character span;
2. find the word `t` in the decoded caption (case-insensitive, whole word);
3. keep a match only if it starts at the first visible character of a piece (a leading space or `▁`
   may precede it inside that piece) and ends at a piece boundary (or before trailing punctuation);
4. the position is that first piece's step; a word split into several pieces ("gir" + "affe") is
   matched as its whole sequence and takes the position that predicts its first piece.

This is tokenizer-agnostic (byte-level BPE with `Ġ`, sentencepiece with `▁`, WordPiece with `##`)
because it only relies on `tokenizer.decode`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from coxlmm.errors import CoxlmmError


@dataclass(frozen=True)
class Match:
    position: int  # index j in the generated ids: the state at step j predicts generated[j]
    token_ids: tuple[int, ...]  # the generated pieces that spell the word
    text: str  # the word as generated (keeps its case)


def validate_token(tokenizer, token: str) -> str:
    """Check that `token` is a non-empty single word the tokenizer can encode; return it stripped."""
    word = (token or "").strip()
    if not word:
        raise CoxlmmError("token is empty: set `token=<word>` to a word that the model generates, e.g. token=dog.")
    if re.search(r"\s", word):
        raise CoxlmmError(f"token {token!r} contains whitespace: give a single word, e.g. token=dog.")
    unk = getattr(tokenizer, "unk_token_id", None)
    for variant in (word, " " + word):
        ids = tokenizer.encode(variant, add_special_tokens=False)
        if not ids or (unk is not None and unk in ids) or tokenizer.decode(ids).strip().lower() != word.lower():
            raise CoxlmmError(
                f"token {token!r} cannot be encoded by this model's tokenizer ({type(tokenizer).__name__}): "
                f"{variant!r} encodes to {ids} (unknown-token id {unk}), which does not decode back to the word. "
                "Pick a word made of characters the tokenizer knows."
            )
    return word


def piece_spans(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decoded text of `ids` and each piece's (start, end) character span in it."""
    text, spans, prev = "", [], 0
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=False)
        spans.append((min(prev, len(text)), len(text)))
        prev = len(text)
    return text, spans


def find_target(tokenizer, generated: list[int], word: str) -> Match | None:
    """First whole-word match of `word` in the generated ids, aligned to pieces; None when absent."""
    return find_targets(tokenizer, generated, [word])[word]


def find_targets(tokenizer, generated: list[int], words: list[str]) -> dict[str, Match | None]:
    """`find_target` for several words of one caption, decoding its pieces once."""
    if not generated:
        return {w: None for w in words}
    text, spans = piece_spans(tokenizer, generated)
    return {w: _first_match(text, spans, generated, w) for w in words}


def _first_match(text: str, spans: list[tuple[int, int]], generated: list[int], word: str) -> Match | None:
    for m in re.finditer(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", text, re.IGNORECASE):
        a, b = m.span()
        first = next((i for i, (s, e) in enumerate(spans) if s <= a < e), None)
        if first is None or text[spans[first][0] : a].strip():  # word starts inside a piece
            continue
        last = next((i for i in range(first, len(spans)) if spans[i][1] >= b), None)
        if last is None or re.search(r"[A-Za-z0-9]", text[b : spans[last][1]]):  # piece runs on
            continue
        return Match(first, tuple(generated[first : last + 1]), m.group(0))
    return None

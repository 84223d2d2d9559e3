"""Scoring a set of concept words T against an image (CLIPScore) and against reference captions (BERTScore).

    CS(x, T) = 2.5 · max(cos(E_img(x), E_txt(words_text(T))), 0)   words_text: "A photo is described by the words …"
    BS(T, refs) = max over r in refs of BERTScore-F1(candidate = bs_text(T), reference = r)

BERTScore reads the words as they are, space-separated ("red circle large"): a fixed template
would add the same tokens to every candidate and match them against every caption, and commas
would be greedily matched to the captions' punctuation.

A word set with no words (a concept whose logit-lens tokens were all filtered out) explains nothing:
it scores 0 in both, the value bert-score gives an empty candidate. Metrics report how often that
happened, so a low mean can be told apart from many empty concepts.
"""

from __future__ import annotations

import torch

from coxlmm.scorers.base import Scorer, clip_score, words_text


def bs_text(words: list[str]) -> str:
    """Candidate text of a word set for BERTScore: the words, space-separated."""
    return " ".join(words)


def words_clip_scores(clip: Scorer, img_emb: torch.Tensor, word_sets: list[list[str]]) -> torch.Tensor:
    """(n,) CS(image i, word_sets[i]); img_emb (n, D) from `clip.embed_images`. Distinct texts are embedded once."""
    texts = sorted({words_text(w) for w in word_sets if w})
    if not texts:
        return torch.zeros(len(word_sets))
    row = {t: i for i, t in enumerate(texts)}
    txt_emb = clip.embed_texts(texts)
    scores = torch.zeros(len(word_sets))
    idx = [i for i, w in enumerate(word_sets) if w]
    scores[idx] = clip_score(img_emb[idx], txt_emb[[row[words_text(word_sets[i])] for i in idx]])
    return scores


def words_clip_scores_many(clip: Scorer, img_emb: torch.Tensor, columns: list[list[list[str]]]) -> list[torch.Tensor]:
    """`words_clip_scores` of several columns (each one word set per image) with every distinct text
    embedded once over all columns."""
    texts = sorted({words_text(w) for sets in columns for w in sets if w})
    if not texts:
        return [torch.zeros(len(sets)) for sets in columns]
    row = {t: i for i, t in enumerate(texts)}
    txt_emb = clip.embed_texts(texts)
    out = []
    for sets in columns:
        scores = torch.zeros(len(sets))
        idx = [i for i, w in enumerate(sets) if w]
        if idx:
            scores[idx] = clip_score(img_emb[idx], txt_emb[[row[words_text(sets[i])] for i in idx]])
        out.append(scores)
    return out


def words_bert_scores(bert, word_sets: list[list[str]], references: list[list[str]]) -> torch.Tensor:
    """(n,) BS(word_sets[i], references[i]): max BERTScore F1 over the references of sample i."""
    scores = torch.zeros(len(word_sets))
    idx = [i for i, w in enumerate(word_sets) if w]
    if idx:
        scores[idx] = bert.f1_max([bs_text(word_sets[i]) for i in idx], [references[i] for i in idx])
    return scores

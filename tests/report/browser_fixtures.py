"""Small synthetic inputs for the concept browser: a toy tokenizer whose logit lens is U itself.

    vocab pieces   sentencepiece style ("▁red" starts a word, "ing" continues one)
    lens.unembed   U (K, vocab) -> U: concept k's logits are its row, so its words are chosen here
    V_train (M, K) / V_test (M', K)  non-negative, sparse, seeded
"""

from __future__ import annotations

import torch
from PIL import Image

from coxlmm.grounding.concept_set import ConceptSet
from coxlmm.grounding.text import concept_words
from coxlmm.grounding.visual import top_samples
from coxlmm.metrics.schema import ConceptColumn, Schema, Score, TableSpec

PIECES = ["<s>", "a", "▁a", "▁red", "▁circle", "ing", "▁the", "▁blue", "▁square", "▁42", "▁ox", "▁Red",
          "▁green", "▁triangle", "▁zzxq", "est", "▁and", "▁yellow", "▁star", "▁large"]
# Concept k's n_top = 6 tokens, best first (the rest of its row is lower still).
CONCEPT_TOKENS = [
    ["▁red", "ing", "▁circle", "▁Red", "▁the", "▁42"],       # red, circle (+ subword, duplicate, stopword, digits)
    ["▁blue", "▁square", "▁ox", "▁zzxq", "est", "ing"],      # blue, square (ox too short, zzxq not a word)
    ["▁green", "▁triangle", "▁large", "▁star", "▁yellow", "▁and"],  # n_words = 3 drops star, yellow
    ["est", "▁and", "<s>", "ing", "▁the", "a"],              # no words at all
]
N_TOP, N_WORDS = 6, 3
K = len(CONCEPT_TOKENS)


class ToyTokenizer:
    all_special_ids = [0]

    def __len__(self) -> int:
        return len(PIECES)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [PIECES.index(text)]

    def decode(self, ids, clean_up_tokenization_spaces: bool = False) -> str:
        return "".join("" if i == 0 else PIECES[i] for i in ids).replace("▁", " ")

    def batch_decode(self, batch, clean_up_tokenization_spaces: bool = False) -> list[str]:
        return [self.decode(ids) for ids in batch]


class ToyLens:
    tokenizer = ToyTokenizer()

    def unembed(self, U: torch.Tensor) -> torch.Tensor:
        return U


def toy_U() -> torch.Tensor:
    U = -0.01 * torch.arange(len(PIECES), dtype=torch.float32).repeat(K, 1)  # no ties below the chosen tokens
    for k, toks in enumerate(CONCEPT_TOKENS):
        for r, t in enumerate(toks):
            U[k, PIECES.index(t)] = 10.0 - r
    return U


COLOURS = [(220, 40, 40), (40, 80, 220), (40, 170, 60), (230, 200, 40)]


def toy_run(M: int = 40, M_test: int = 12, seed: int = 0, missing_image: int | None = 3):
    """(kwargs of write_run_report but out_dir, V_train) for a toy run of K=4 concepts.

    Sample i of either split shows the colour of its most active concept; dataset index = 100 + i
    (train) or 500 + i (test); the train sample with dataset index 100 + `missing_image` has no image.
    """
    g = torch.Generator().manual_seed(seed)
    V = torch.rand(M, K, generator=g) * (torch.rand(M, K, generator=g) > 0.5)
    V[:, 3] = 0  # a dead concept
    V_test = torch.rand(M_test, K, generator=g) * (torch.rand(M_test, K, generator=g) > 0.4)
    lens, U = ToyLens(), toy_U()
    words = concept_words(lens, U, n_top=N_TOP, n_words=N_WORDS)
    rows = top_samples(V, 5)
    train = [{"id": f"tr{i}", "index": 100 + i, "caption": f"a caption {i}", "captions": [f"ref {i}"]} for i in range(M)]
    test = [{"id": f"te{i}", "index": 500 + i, "caption": f"test caption {i}", "captions": [f"test ref {i}"]}
            for i in range(M_test)]
    concepts = ConceptSet(U=U, V=V, words=words, top_samples=[[train[r]["id"] for r in rk] for rk in rows],
                          top_indices=rows, method="semi_nmf", layer=2, token="circle")
    colour_of = {("train", 100 + i): COLOURS[int(V[i].argmax())] for i in range(M)}
    colour_of.update({("test", 500 + i): COLOURS[int(V_test[i].argmax())] for i in range(M_test)})

    def image(split: str, index: int):
        if split == "train" and missing_image is not None and index == 100 + missing_image:
            return None
        return Image.new("RGB", (128, 96), colour_of[(split, index)])

    return dict(concepts=concepts, V_train=V, V_test=V_test, train=train, test=test, lens=lens, n_top=N_TOP, n_words=N_WORDS,
                metrics={"overlap": 0.25, "stability": 0.9, "recon_rel_error_train": float("nan"), "undescribed": 3.0},
                schema=TOY_SCHEMA,
                concept_scores={"recovery_value": ["colour = red", "colour = blue", None, None],
                                "recovery_auroc": [0.91, 0.83, None, None],
                                "stability_cos": [0.9 - 0.1 * k for k in range(K)]},
                image=image)


# What the metrics would say of those numbers (the browser renders from this, knowing no key).
TOY_SCHEMA = Schema(
    scores=[Score("overlap", "Overlap", ("overlap",), better=-1, summary=True),
            Score("stability", "Stability", ("dictionary",)),
            Score("recon_rel_error_train", "Recon. err. train", ("dictionary",))],
    concepts=[ConceptColumn("stability_cos", "stability |cos|", sortable=True),
              ConceptColumn("recovery_value", "matched value (train)"),
              ConceptColumn("recovery_auroc", "matched value: test AUROC", sortable=True)],
    tables=[TableSpec("overlap", "Overlap of concept words"), TableSpec("dictionary", "The dictionaries")])

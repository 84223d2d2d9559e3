"""Small stand-ins for the scorer, the LMM and the dictionary, to test the CS/BS metrics fast.

- `ColourClip`: an image's embedding is its mean colour; a text's is how often it names red,
  green, blue (+ a constant), so "red" words score high on red images and CS lands in [0, 2.5].
- `OverlapBert`: BS = word-overlap F1 (max over references), in [0, 1].
- `TinyLMM`: the real BERT WordPiece tokenizer of all-MiniLM-L6-v2 with a random unembedding, so
  the real word filter (`grounding.text`) runs; one linear "decoder block" hooked by the extraction.
- `RowsDictionary`: U = the K largest-norm rows of Z (normalised), V = relu(Z Uᵀ).
- `make_input`: an EvalInput on small shapes-world splits with K = 4 concepts named after colours.
- `records_of`: store-like records (index, id, token_ids, annotation) for dataset rows.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from coxlmm.data.shapes import ShapesWorld
from coxlmm.grounding.concept_set import ConceptSet
from coxlmm.metrics.base import EvalInput, Services, Split
from coxlmm.models.base import GenerationOutput
from coxlmm.scorers.base import Scorer, Scorers, l2_normalise

COLOUR_WORDS = ("red", "green", "blue")


def mean_colours(images) -> torch.Tensor:
    """(n, 3) mean RGB of each image, in [0, 1]."""
    return torch.tensor(np.stack([np.asarray(im.convert("RGB"), dtype=np.float32).mean((0, 1)) / 255 for im in images]))


class ColourClip(Scorer):
    def embed_images(self, images):
        x = mean_colours(images)
        return l2_normalise(torch.cat([x, torch.full((len(images), 1), 0.2)], 1))

    def embed_texts(self, texts):
        counts = [[len(re.findall(rf"\b{w}\b", t.lower())) for w in COLOUR_WORDS] + [0.2] for t in texts]
        return l2_normalise(torch.tensor(counts, dtype=torch.float32))

    def fingerprint(self):
        return {"scorer": "colour"}


class OverlapBert:
    def f1_max(self, candidates, references):
        def f1(a, b):
            a, b = set(re.findall(r"[a-z]+", a.lower())), set(re.findall(r"[a-z]+", b.lower()))
            if not a or not b:
                return 0.0
            p, r = len(a & b) / len(a), len(a & b) / len(b)
            return 0.0 if p + r == 0 else 2 * p * r / (p + r)

        return torch.tensor([max(f1(c, r) for r in refs) for c, refs in zip(candidates, references)])

    def fingerprint(self):
        return {"bert": "overlap"}


def fake_scorers() -> Scorers:
    return Scorers(clip=ColourClip(), bert=OverlapBert())


class TinyLMM(nn.Module):
    """Implements what the metrics use of the `LMM` protocol: prepare / generate / decoder_layers /
    unembed / tokenizer / hidden_size / resolve_layer / device."""

    def __init__(self, hidden_size: int = 16, seed: int = 0):
        super().__init__()
        from transformers import AutoTokenizer

        from coxlmm.scorers.bertscore import minilm_dir

        g = torch.Generator().manual_seed(seed)
        self.tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
        self.hidden_size, self.num_layers, self.model_id = hidden_size, 1, "tiny"
        self.inp = nn.Linear(3, hidden_size)
        self.blocks = nn.ModuleList([nn.Linear(hidden_size, hidden_size)])
        self.W = torch.randn(len(self.tokenizer), hidden_size, generator=g)

    def prepare(self, images):
        return {"pixels": mean_colours(images)}

    def decoder_layers(self):
        return self.blocks

    def hook_points(self):
        return list(self.blocks)

    def generate(self, inputs, max_new_tokens):
        h = self.blocks[0](self.inp(inputs["pixels"])[:, None, :])  # (B, 1, H): one "prefill" call
        ids = self.unembed(h[:, -1]).argmax(-1, keepdim=True)
        return GenerationOutput(sequences=ids, lengths=torch.ones(len(ids), dtype=torch.long))

    def unembed(self, h):
        return h.float() @ self.W.T

    def resolve_layer(self, layer):
        return layer % self.num_layers

    @property
    def device(self):
        return torch.device("cpu")


class RowsDictionary:
    def __init__(self, n_concepts: int):
        self.n_concepts = n_concepts

    def fit(self, Z):
        rows = Z.norm(dim=1).argsort(descending=True)[: self.n_concepts]
        self.U = torch.nn.functional.normalize(Z[rows].float(), dim=1)
        return self

    def encode(self, Z):
        return torch.relu(Z.float() @ self.U.T)


H, K = 16, 4
CONCEPT_WORDS = [["red", "circle"], ["blue", "star", "large"], [], ["green"]]


def records_of(dataset, rows=None, token: str = "circle") -> list[dict]:
    """Store-like records of dataset rows: index, id, token_ids, and the world's target annotation."""
    rows = range(len(dataset)) if rows is None else rows
    out = []
    for i in rows:
        rec = dataset.records[i]
        ann = dataset.annotate(rec, rec.captions[0], "", token) if hasattr(dataset, "annotate") else {}
        out.append({"index": i, "id": rec.id, "caption": rec.captions[0], "position": 0, "token_ids": [1],
                    "annotation": ann})
    return out


def make_input(scorer="fake", lmm=True, *, refit=None, noise_train=(), noise_test=(), V_test=None,
               dictionary=None, factors=None, token="circle") -> EvalInput:
    train = ShapesWorld("train", n_train=40, image_size=32)
    test = ShapesWorld("test", n_test=12, image_size=32)
    g = torch.Generator().manual_seed(0)
    Z_train, Z_test = torch.randn(40, H, generator=g), torch.randn(12, H, generator=g)
    U = torch.nn.functional.normalize(torch.randn(K, H, generator=g), dim=1)
    V_train = torch.relu(Z_train @ U.T)
    V_test = torch.relu(Z_test @ U.T) if V_test is None else V_test
    colour_rows = {c: [i for i, r in enumerate(train.records) if c in r.attributes["colour"]][:5]
                   for c in ("red", "blue", "green")}
    top = [colour_rows["red"], colour_rows["blue"], [0, 1], colour_rows["green"]]
    concepts = ConceptSet(U=U, V=V_train, words=CONCEPT_WORDS, top_indices=top,
                          top_samples=[[train.records[r].id for r in rows] for rows in top])
    lens = TinyLMM(H) if lmm else None

    def ground(U_):
        from coxlmm.grounding.text import concept_words

        return concept_words(lens, U_, n_top=50, n_words=10)

    return EvalInput(
        train=Split(Z_train, V_train, records_of(train, token=token), train, noise_train),
        test=Split(Z_test, V_test, records_of(test, token=token), test, noise_test),
        dictionary=dictionary, concepts=concepts,
        services=Services(lens=lens, ground=ground, refit=refit or (lambda Z, seed: RowsDictionary(K).fit(Z)),
                          scorer=fake_scorers() if scorer == "fake" else scorer),
        token=token, layer=0, seed=0, factors=factors if factors is not None else {})

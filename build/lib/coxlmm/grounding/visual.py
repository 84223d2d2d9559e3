"""Visual grounding X_k,MAS, and `build_concept_set`, which grounds a fitted dictionary both ways.

    V        (M, K)  activations of the M training samples (rows of Z_train)
    X_k,MAS          the N_MAS rows with the largest v_k: the concept's most activating samples
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from coxlmm.grounding.concept_set import ConceptSet
from coxlmm.grounding.text import concept_words

if TYPE_CHECKING:
    from coxlmm.concepts.base import Dictionary


def top_samples(V: torch.Tensor, n_mas: int = 5, drop_zero: bool = True) -> list[list[int]]:
    """Row indices of the N_MAS largest activations of each concept: V (M, K) -> K lists.

    Best first; ties keep the lower row first (stable sort), so the result is deterministic.
    `drop_zero`: rows with v_k == 0 do not activate concept k at all (Semi-NMF / NMF codes are
    sparse), so they are left out and a rarely used concept gets fewer than N_MAS samples, rather
    than arbitrary ones. Signed activations (PCA) are ranked by value, as in the reference code.
    """
    if V.ndim != 2:
        raise ValueError(f"V must be (M, K), got shape {tuple(V.shape)}")
    n = min(n_mas, V.shape[0])
    values, order = torch.sort(V.detach().float().cpu(), dim=0, descending=True, stable=True)
    out: list[list[int]] = []
    for k in range(V.shape[1]):
        rows = order[:n, k].tolist()
        if drop_zero:
            rows = [r for r, v in zip(rows, values[:n, k].tolist()) if v != 0]
        out.append(rows)
    return out


def build_concept_set(
    dictionary: "Dictionary",
    lmm: Any,
    sample_ids: Sequence[str],
    *,
    V: torch.Tensor | None = None,
    tokenizer: Any = None,
    n_mas: int = 5,
    n_top: int = 50,
    n_words: int = 10,
    layer: int = -1,
    token: str = "",
    method: str | None = None,
) -> ConceptSet:
    """Ground a fitted dictionary: words T_k from U through `lmm.unembed`, X_k,MAS from V.

    dictionary: fitted, with `U` (K, B), `V_train` (M, K) and `name`
    lmm:        an `LMM` (or anything with `unembed` + `tokenizer`; or an unembed callable with `tokenizer=`)
    sample_ids: id of the sample behind each row of Z_train (length M)
    V:          activations to rank instead of `dictionary.V_train` (e.g. re-encoded), (M, K)
    """
    U = dictionary.U.detach()
    V = (dictionary.V_train if V is None else V).detach()
    if V.shape[0] != len(sample_ids):
        raise ValueError(f"V has {V.shape[0]} rows but {len(sample_ids)} sample ids were given; "
                         "pass the id of the sample behind each row of Z_train")
    rows = top_samples(V, n_mas)
    return ConceptSet(
        U=U.cpu(),
        V=V.cpu(),
        words=concept_words(lmm, U, tokenizer, n_top=n_top, n_words=n_words),
        top_samples=[[sample_ids[r] for r in rk] for rk in rows],
        top_indices=rows,
        method=method if method is not None else getattr(dictionary, "name", type(dictionary).__name__),
        layer=layer,
        token=token,
    )

"""Bad input gets a CoxlmmError that names the value and what is accepted."""

from __future__ import annotations

import pytest
import torch

from coxlmm.concepts import build_dictionary, method_names
from coxlmm.errors import CoxlmmError


@pytest.mark.parametrize("method", method_names())
def test_more_concepts_than_samples(method):
    Z = torch.rand(5, 8)
    with pytest.raises(CoxlmmError, match=r"n_concepts=6 is larger than the number of samples M=5"):
        build_dictionary(method, n_concepts=6).fit(Z)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features(bad):
    Z = torch.rand(20, 8)
    Z[3, 1] = bad
    Z[7, 0] = bad
    with pytest.raises(CoxlmmError, match=r"non-finite values \(NaN or inf\) in 2 of its 20 rows \(first bad row: 3\)"):
        build_dictionary("semi_nmf", n_concepts=3).fit(Z)


def test_nmf_refuses_negative_features_and_names_the_opt_in():
    Z = torch.rand(20, 8) - 0.25
    n_neg = int((Z < 0).sum())
    with pytest.raises(CoxlmmError) as err:
        build_dictionary("nmf", n_concepts=3).fit(Z)
    msg = str(err.value)
    assert f"{n_neg} negative entries" in msg
    assert "shift=min" in msg and "shift=relu" in msg and "semi_nmf" in msg
    for shift in ("min", "relu"):  # the documented opt-ins work
        assert (build_dictionary("nmf", n_concepts=3, shift=shift).fit(Z).V_train >= 0).all()


def test_unknown_method_lists_the_config_files():
    with pytest.raises(CoxlmmError) as err:
        build_dictionary("ica", n_concepts=3)
    msg = str(err.value)
    assert "'ica'" in msg
    for name in method_names():
        assert name in msg


@pytest.mark.parametrize("Z, match", [
    (torch.rand(10), r"2-D tensor .* got shape \(10,\)"),
    (torch.rand(0, 4), "is empty"),
])
def test_malformed_features(Z, match):
    with pytest.raises(CoxlmmError, match=match):
        build_dictionary("pca", n_concepts=1).fit(Z)


@pytest.mark.parametrize("method, params, match", [
    ("semi_nmf", {"alpha": -1.0}, r"alpha=-1.0 is invalid; it must be a number >= 0"),
    ("semi_nmf", {"init": "nndsvd"}, r"init='nndsvd' is invalid; accepted values: svd, random"),
    ("nmf", {"shift": "abs"}, r"shift='abs' is invalid; accepted values: none, min, relu"),
    ("random_dict", {"activation": "tanh"}, r"accepted values: lasso, relu"),
    ("kmeans", {"max_iter": 0}, r"max_iter=0 is invalid"),
    ("semi_nmf", {"alpha_scale": "median"}, r"alpha_scale='median' is invalid; accepted values: absolute, relative"),
    ("topk_sae", {"k": 30}, r"k=30 active latents per sample exceeds n_concepts=2"),
    ("topk_sae", {"k": 1, "lr": 0.0}, r"lr=0.0 is invalid; it must be a number > 0"),
    ("matryoshka_sae", {"n_concepts": 4, "k": 1, "group_sizes": [1, 1]}, r"group_sizes=\[1, 1\] must be positive and sum to n_concepts=4"),
])
def test_bad_parameters(method, params, match):
    with pytest.raises(CoxlmmError, match=match):
        build_dictionary(method, **{"n_concepts": 2, **params})


@pytest.mark.parametrize("n_concepts", [0, -3, 2.5, "20"])
def test_bad_n_concepts(n_concepts):
    with pytest.raises(CoxlmmError, match="n_concepts must be a positive integer"):
        build_dictionary("semi_nmf", n_concepts=n_concepts)


def test_encode_before_fit_and_with_wrong_width():
    d = build_dictionary("semi_nmf", n_concepts=2)
    with pytest.raises(CoxlmmError, match="not fitted yet"):
        d.encode(torch.rand(3, 8))
    d.fit(torch.rand(10, 8))
    with pytest.raises(CoxlmmError, match=r"has 5 dimensions per row .* B=8"):
        d.encode(torch.rand(3, 5))
    with pytest.raises(CoxlmmError, match=r"V must have shape \(M, K=2\)"):
        d.decode(torch.rand(3, 3))

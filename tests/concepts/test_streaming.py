"""Fits that stream from the feature store: the same dictionary as in memory, memory bounded by the
batch, clear errors on bad input, and a rerun after an interruption gives the same dictionary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from coxlmm.concepts import build_dictionary, method_names
from coxlmm.concepts.lasso import lasso_objective
from coxlmm.errors import CoxlmmError
from coxlmm.extraction.reader import ShardRows, TensorRows
from coxlmm.extraction.store import FeatureStore
from coxlmm.metrics.planted import planted_features

LAYER = 3


def write_store(root, Z: torch.Tensor, shard_rows: int = 97, ranks: int = 1) -> FeatureStore:
    """Z as a complete feature-store entry: shards of `shard_rows` samples (every 7th sample not
    selected), rows interleaved over `ranks` as a DDP extraction writes them."""
    store = FeatureStore(root, {"model": "m", "token": "dog", "n": len(Z)})
    index, rows = 0, []
    for m in range(len(Z)):  # dataset index of each row of Z (unselected samples in between)
        if index % 7 == 6:
            index += 1
        rows.append(index)
        index += 1
    chosen = set(rows)
    records = [{"index": i, "id": f"s{i}", "caption": "", "position": 1, "token_ids": [1],
                "status": "selected" if i in chosen else "token_not_generated", "selected": i in chosen}
               for i in range(index)]
    chunk = shard_rows * ranks
    row_of = {i: m for m, i in enumerate(rows)}
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        for rank in range(ranks):
            mine = part[rank::ranks]
            sel = [row_of[r["index"]] for r in mine if r["selected"]]
            store.write_shard(rank, mine, {LAYER: Z[sel] if sel else torch.empty(0, Z.shape[1])})
    store.finalize({})
    return store


@pytest.fixture(scope="module")
def planted():
    Z, _, _ = planted_features(M=600, B=32, T=8, p_fire=0.15, offset=3.0, seed=0)
    return Z


def test_shard_reader_gives_the_stores_rows_in_order(tmp_path, planted):
    for ranks in (1, 2):
        store = write_store(tmp_path / f"r{ranks}", planted, ranks=ranks)
        rows = ShardRows(store, LAYER)
        assert (rows.n_rows, rows.dim) == tuple(planted.shape)
        assert torch.equal(torch.cat(list(rows.blocks(50))), store.load([LAYER])[0][LAYER])
        assert torch.equal(torch.cat(list(rows.blocks(50))), planted)


# method -> (parameters, tolerance on U, or None when only the objective is compared)
STREAMED = {
    "topk_sae": (dict(n_concepts=8, k=2, max_epochs=3, batch_size=64), 1e-5),
    "batchtopk_sae": (dict(n_concepts=8, k=2, max_epochs=3, batch_size=64), 1e-5),
    "matryoshka_sae": (dict(n_concepts=8, k=2, max_epochs=3, batch_size=64), 1e-5),
    "semi_nmf": (dict(n_concepts=8, batch_size=128, passes=3), 1e-8),
    "semi_nmf_l0": (dict(n_concepts=8, batch_size=128, passes=3), 1e-8),  # Semi-NMF at a relative alpha
    "pca": (dict(n_concepts=8), 1e-6),
    "simple": (dict(n_concepts=8), 0.0),
    "random_dict": (dict(n_concepts=8, alpha_scale="relative", alpha=0.05), 0.0),
    "nmf_shifted": (dict(n_concepts=8, max_iter=100), None),
    "nmf": (dict(n_concepts=8, max_iter=100, shift="relu"), None),
    "kmeans": (dict(n_concepts=8), None),
}


def test_every_method_streams():
    assert set(STREAMED) == set(method_names())


@pytest.mark.parametrize("name", sorted(STREAMED))
def test_streamed_fit_equals_the_in_memory_fit(name, planted, tmp_path):
    params, tol = STREAMED[name]
    rows = ShardRows(write_store(tmp_path, planted), LAYER)
    memory = build_dictionary(name, seed=3, **params).fit(planted)
    streamed = build_dictionary(name, seed=3, **params).fit_stream(rows, block_rows=128)
    assert streamed.V_train is None
    if tol is not None:
        torch.testing.assert_close(streamed.U, memory.U, atol=tol, rtol=0)
        torch.testing.assert_close(streamed.encode(planted), memory.encode(planted), atol=1e-4, rtol=1e-4)
    elif name == "kmeans":  # MiniBatchKMeans, the incremental form: close to Lloyd's inertia
        from coxlmm.concepts.kmeans import inertia

        assert inertia(planted.double(), streamed.U.double()) < 1.15 * inertia(planted.double(), memory.U.double())
    else:  # online HALS: the same objective, its own path
        def loss(d):
            X = d._nonnegative_features(planted.double())
            return lasso_objective(X, d.encode(planted), d.U, 0.0)

        assert loss(streamed) < 1.05 * loss(memory)


def test_online_semi_nmf_reaches_the_exact_solvers_objective(planted):
    """Online Semi-NMF (memory bounded by the batch) against the in-memory exact solver."""
    exact = build_dictionary("semi_nmf", n_concepts=8).fit(planted)
    f_exact = lasso_objective(planted, exact.V_train, exact.U, 1.0)
    for v_solver, bound in (("exact", 1.01), ("fista", 1.03)):
        online = build_dictionary("semi_nmf", n_concepts=8, batch_size=100, passes=20, v_solver=v_solver).fit(planted)
        f = lasso_objective(planted, online.V_train, online.U, 1.0)
        assert f < bound * f_exact, f"{v_solver}: {f:.2f} vs the exact solver's {f_exact:.2f}"


def test_bad_batches_are_refused(planted, tmp_path):
    rows = ShardRows(write_store(tmp_path, planted), LAYER)
    with pytest.raises(CoxlmmError, match="batch_size=601 is larger than the data: Z has M=600 rows"):
        build_dictionary("topk_sae", n_concepts=8, k=2, batch_size=601).fit_stream(rows)
    with pytest.raises(CoxlmmError, match="batch_size=700 is larger than the data"):
        build_dictionary("semi_nmf", n_concepts=8, batch_size=700).fit(planted)
    with pytest.raises(CoxlmmError, match="block_rows=0"):
        build_dictionary("pca", n_concepts=8).fit_stream(rows, block_rows=0)


class _Interrupt(Exception):
    pass


def test_a_store_entry_that_changes_mid_fit_is_an_error_and_a_rerun_gives_the_same_dictionary(planted, tmp_path):
    store = write_store(tmp_path, planted)
    rows = ShardRows(store, LAYER)
    params = dict(n_concepts=8, batch_size=128, passes=3)
    clean = build_dictionary("semi_nmf", seed=1, **params).fit_stream(rows)

    # Interrupted after a few blocks (a killed job), then rerun: the same dictionary.
    read, calls = rows.read, {"n": 0}

    def flaky(start, stop):
        calls["n"] += 1
        if calls["n"] == 7:
            raise _Interrupt
        return read(start, stop)

    rows.read = flaky
    with pytest.raises(_Interrupt):
        build_dictionary("semi_nmf", seed=1, **params).fit_stream(rows)
    rows.read = read
    rerun = build_dictionary("semi_nmf", seed=1, **params).fit_stream(rows)
    assert torch.equal(rerun.U, clean.U)

    # Another job rewrites a shard while the fit runs: the next pass stops with a clear error.
    def rewrite_then_read(start, stop):
        if start == 0 and calls.setdefault("rewritten", False) is False:
            calls["rewritten"] = True
        elif start == 0:
            shard = sorted(store.dir.glob("shard-*.json"))[0]
            shard.write_text(shard.read_text())  # same bytes, a new write
        return read(start, stop)

    rows.read = rewrite_then_read
    with pytest.raises(CoxlmmError, match="changed during a streamed fit .shard-"):
        build_dictionary("semi_nmf", seed=1, **params).fit_stream(rows)


PEAK = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from coxlmm.concepts import build_dictionary
    from coxlmm.extraction.reader import ShardRows
    from coxlmm.extraction.store import FeatureStore

    store = FeatureStore(sys.argv[1], json.loads(sys.argv[2]))
    rows = ShardRows(store, 3)

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    for name, params in [("semi_nmf", dict(n_concepts=16, batch_size=2048, passes=2)),
                         ("topk_sae", dict(n_concepts=16, k=4, max_epochs=1, batch_size=256, shuffle_rows=2048)),
                         ("pca", dict(n_concepts=16))]:
        # Warm-up on a small in-memory Z: the first use of torch's kernels maps code pages, which count
        # in the resident memory once; the measured fit must not pay for them.
        build_dictionary(name, **params).fit_stream(torch.randn(4096, rows.dim), block_rows=2048)
        d = build_dictionary(name, **params)
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
        base = rss("VmRSS:")
        d.fit_stream(rows, block_rows=2048)
        print(name, rss("VmHWM:") - base, flush=True)
""")


@pytest.mark.slow  # ~1 min: it writes and reads a 164 MB store three times
def test_peak_memory_of_a_streamed_fit_is_bounded_by_the_batch_not_by_m(tmp_path):
    """A store of Z = 80,000 × 512 float32 (164 MB); each streamed fit (Semi-NMF, TopK SAE, PCA)
    must stay within 64 MB above what the process held before it (its peak resident memory,
    VmHWM, reset just before the fit): less than half of Z. An in-memory fit holds all of Z."""
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(80_000, 512, generator=g)
    store = write_store(tmp_path, Z, shard_rows=5_000)
    size, limit = Z.numel() * 4, 64 * 2**20
    del Z
    # Large buffers straight from mmap and back to the OS when freed: glibc's default raises its mmap
    # threshold after the first large free and then keeps freed blocks in its heap, so the resident
    # memory would count buffers long dead (the measure is of what the fit holds, not the allocator).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    out = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path), json.dumps(store.fields)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    peaks = {line.split()[0]: int(line.split()[1]) for line in out.stdout.split("\n") if line.strip()}
    assert set(peaks) == {"semi_nmf", "topk_sae", "pca"}
    said = ", ".join(f"{n} {p / 2**20:.0f} MB" for n, p in peaks.items())
    assert limit < size / 2
    assert max(peaks.values()) < limit, f"peaks above the baseline: {said} (Z is {size / 2**20:.0f} MB)"


def test_tensor_rows_read_like_a_store(planted):
    rows = TensorRows(planted)
    assert torch.equal(torch.cat(list(rows.blocks(77))), planted)

"""Feature store: atomic shards, resume gives the same Z, DDP-style rank shards merge into one Z."""

import json

import torch

from coxlmm.extraction.store import FeatureStore


def _shard(store, rank, indices, selected, B=4):
    recs = [{"index": i, "id": f"s{i}", "caption": f"cap {i}", "status": "selected" if i in selected else "token_not_generated",
             "selected": i in selected, "position": 1 if i in selected else None, "token_ids": [7] if i in selected else None}
            for i in indices]
    sel = [i for i in indices if i in selected]
    tensors = {l: torch.tensor([[float(i * 10 + l)] * B for i in sel]) for l in (0, 1)}
    store.write_shard(rank, recs, tensors)


def test_resume_equals_uninterrupted_and_ranks_merge(tmp_path):
    fields = {"model": "m", "token": "dog"}
    selected = {0, 2, 3, 5, 6}
    full = FeatureStore(tmp_path / "a", fields)
    _shard(full, 0, [0, 1, 2, 3], selected)
    _shard(full, 0, [4, 5, 6], selected)
    full.finalize({})
    # "interrupted" store: shards written out of order by two ranks, one duplicated sample (DDP padding)
    other = FeatureStore(tmp_path / "b", fields)
    _shard(other, 1, [4, 5, 6, 0], selected)
    assert not other.complete and other.done_indices() == {0, 4, 5, 6}
    _shard(other, 0, [1, 2, 3], selected)
    other.finalize({})
    Za, ra = full.load([0, 1])
    Zb, rb = other.load([0, 1])
    assert [r["index"] for r in ra] == [0, 2, 3, 5, 6] == [r["index"] for r in rb]
    for l in (0, 1):
        assert torch.equal(Za[l], Zb[l])
        assert Za[l][:, 0].tolist() == [i * 10 + l for i in (0, 2, 3, 5, 6)]
    man = json.loads((tmp_path / "a" / full.key / "manifest.json").read_text())
    assert man["counts"] == {"seen": 7, "selected": 5, "token_not_generated": 2}
    assert man["token"] == "dog" and len(man["samples"]) == 5


def test_key_changes_with_fields_and_no_temp_files_left(tmp_path):
    a, b = FeatureStore(tmp_path, {"token": "dog"}), FeatureStore(tmp_path, {"token": "cat"})
    assert a.key != b.key
    _shard(a, 0, [0, 1], {0})
    assert not list(a.dir.glob(".*tmp")) and len(list(a.dir.glob("shard-*"))) == 2


def test_half_written_shard_is_ignored(tmp_path):
    s = FeatureStore(tmp_path, {"token": "dog"})
    _shard(s, 0, [0, 1], {0, 1})
    # an interrupted write leaves at most a temp file or tensors without their JSON
    (s.dir / "shard-000000002-r0.safetensors").write_bytes(b"partial")
    (s.dir / ".shard-000000003-r0.json.123.tmp").write_text("{")
    assert s.done_indices() == {0, 1}


def test_named_outputs_over_generated_tokens_of_shards_with_different_lengths_load_zero_padded(tmp_path):
    """A causal stage's shards end at each batch's longest caption ((M, V, T) with T 3 and 5): they load as one
    (M, V, 5) tensor, the short shard zero-padded, rows in dataset order (make causal failed here on 2026-12-06)."""
    store = FeatureStore(tmp_path, {"source": "caption_ce"})
    recs = lambda idx: [{"index": i, "id": f"s{i}", "status": "selected", "selected": True} for i in idx]  # noqa: E731
    store.write_shard(0, recs([2, 3]), {"logp": torch.full((2, 2, 5), -1.0), "lengths": torch.tensor([5, 4])})
    store.write_shard(0, recs([0, 1]), {"logp": torch.full((2, 2, 3), -2.0), "lengths": torch.tensor([3, 2])})
    store.finalize({})
    out, records = store.load_named(("logp", "lengths"))
    assert [r["index"] for r in records] == [0, 1, 2, 3] and out["logp"].shape == (4, 2, 5)
    assert out["logp"][0, :, :3].eq(-2).all() and out["logp"][0, :, 3:].eq(0).all() and out["logp"][3].eq(-1).all()
    assert out["lengths"].tolist() == [3, 2, 5, 4]

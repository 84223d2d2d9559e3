"""Extraction through Lightning predict on tiny HF VLMs of three architectures.

The extracted row for a sample must equal the state of an independent teacher-forced forward pass
over prompt + generated tokens at that position, and the LM head there must predict the target.
"""


import pytest
import torch

from coxlmm.data.folder import ImageFolderCaptions
from coxlmm.errors import CoxlmmError
from coxlmm.extraction import ExtractionSettings, extract
from coxlmm.models.hf import HFVisionLM
from tests.extraction.conftest import make_folder_dataset
from tests.fixtures.tiny_models import load_card

TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}


@pytest.fixture(scope="module")
def lmm_and_card(tiny_vlm_path):
    return HFVisionLM(name_or_path=str(tiny_vlm_path)), load_card(tiny_vlm_path)


def _card_data(card, tmp_path, **kw):
    """Folder data whose ground-truth captions use the words the tiny model generates."""
    words = (card.single_piece_word, card.multi_piece_word, card.capitalised_word)
    return make_folder_dataset(tmp_path / "data", words=words, **kw)


def _run(lmm, ds, token, root, **kw):
    return extract(lmm, ds, token, [-1, 0], ExtractionSettings(batch_size=4, max_new_tokens=20, **kw), str(root), TRAINER)


@pytest.mark.parametrize("kind", ["single_piece_word", "multi_piece_word", "capitalised_word"])
def test_row_equals_independent_forward(lmm_and_card, tmp_path, kind):
    lmm, card = lmm_and_card
    word = getattr(card, kind)
    ds = ImageFolderCaptions(str(_card_data(card, tmp_path)), split="train")
    # the folder captions mention dog/giraffe/sofa; lower-case on purpose: matching is case-insensitive
    store = _run(lmm, ds, word.lower(), tmp_path / "store")
    layers = list(range(lmm.num_layers))
    Z, recs = store.load(layers)
    assert len(recs) == len(ds) and Z[0].shape == (len(ds), lmm.hidden_size)
    man = store.manifest()
    assert man["counts"]["selected"] == len(ds) and man["model"]["prompt"]
    for i, rec in enumerate(recs[:2]):
        sample = ds[rec["index"]]
        inputs = lmm.prepare([sample.image])
        gen = torch.tensor([card.caption_ids[: rec["position"] + 1]])
        ref = lmm.teacher_forced_states(inputs, gen, layers)
        for l in layers:
            torch.testing.assert_close(Z[l][i], ref[l][0, rec["position"]], atol=1e-4, rtol=1e-4)
        logits = lmm.unembed(Z[lmm.num_layers - 1][i : i + 1])
        assert int(logits.argmax()) == rec["token_ids"][0]
        assert lmm.tokenizer.decode(rec["token_ids"]).strip().lower() == word.lower()


def test_resume_gives_same_z_and_cache_is_reused(lmm_and_card, tmp_path):
    lmm, card = lmm_and_card
    ds = ImageFolderCaptions(str(_card_data(card, tmp_path)), split="train")
    word = card.single_piece_word
    full = _run(lmm, ds, word, tmp_path / "a")
    Z_full, _ = full.load([0, 1])
    # simulate an interruption: manifest and the last shard gone
    part = _run(lmm, ds, word, tmp_path / "b")
    (part.dir / "manifest.json").unlink()
    last = sorted(part.dir.glob("shard-*.json"))[-1]
    last.unlink()
    assert not part.complete and 0 < len(part.done_indices()) < len(ds)
    resumed = _run(lmm, ds, word, tmp_path / "b")
    Z_res, _ = resumed.load([0, 1])
    for l in (0, 1):
        torch.testing.assert_close(Z_res[l], Z_full[l], atol=1e-5, rtol=1e-5)
    # a complete store is reused without touching the model
    mtime = (resumed.dir / "manifest.json").stat().st_mtime_ns
    again = _run(lmm, ds, word, tmp_path / "b")
    assert again.key == resumed.key and (again.dir / "manifest.json").stat().st_mtime_ns == mtime


def test_corrupt_image_is_skipped_and_counted(lmm_and_card, tmp_path):
    lmm, card = lmm_and_card
    root = _card_data(card, tmp_path, corrupt=2)
    ds = ImageFolderCaptions(str(root), split="train")
    with pytest.warns(UserWarning, match="unreadable"):
        store = _run(lmm, ds, card.single_piece_word, tmp_path / "s")
    counts = store.manifest()["counts"]
    assert counts["unreadable_image"] == 2 and counts["selected"] == len(ds) - 2


def test_no_sample_selected_names_frequent_words(lmm_and_card, tmp_path):
    lmm, card = lmm_and_card
    root = make_folder_dataset(tmp_path / "d", words=("zebra",))
    ds = ImageFolderCaptions(str(root), split="train")
    with pytest.raises(CoxlmmError, match=r"no sample selected.*captions were generated.*Most frequent words.*dog"):
        _run(lmm, ds, "zebra", tmp_path / "s")


def test_token_absent_from_ground_truth(lmm_and_card, folder_data, tmp_path):
    lmm, _ = lmm_and_card
    ds = ImageFolderCaptions(str(folder_data), split="train")
    with pytest.raises(CoxlmmError, match="no sample .* ground-truth caption"):
        _run(lmm, ds, "zebra", tmp_path / "s")


def test_layer_out_of_range(lmm_and_card):
    lmm, _ = lmm_and_card
    with pytest.raises(CoxlmmError, match=r"out of range.*\[-3, 2\]"):
        lmm.resolve_layer(3)

"""The concept browser without a browser: the JSON export, the files written, the word-filter reasons,
the failed-run page, the sweep index and the layer page."""

import json
import random
import re

import numpy as np
import pytest
from PIL import Image

from coxlmm.grounding.text import DROP_REASONS, KEPT, filter_reasons, filter_words
from coxlmm.layer import Layer
from coxlmm.report.browser import (inline_report_html, write_failed_report, write_layers_page, write_run_report,
                                    write_sweep_index)
from coxlmm.report.browser.export import SCHEMA, histogram, quantile_bins
from coxlmm.report.browser.index import metric_columns
from coxlmm.report.browser.render import markdown_html
from tests.report.browser_fixtures import K, N_WORDS, toy_run


# --- the word filter's reasons ----------------------------------------------------------------------

def test_filter_reasons_keep_exactly_what_filter_words_keeps():
    vocab = {"red", "circle", "blue", "square", "dogs", "dog", "box"}
    parts = ["▁red", " circle", "ing", "Red", " the", " 42", " ox", " dogs", " boxes", " zzxq", "", "##ing",
             " blue", " RED", " square", "Ġbox", " élan"]
    rng = random.Random(0)
    for trial in range(200):
        pieces = [rng.choice(parts) for _ in range(rng.randint(0, 14))]
        n = rng.randint(0, 5)
        reasons = filter_reasons(pieces, n, vocabulary=vocab)
        assert len(reasons) == len(pieces) and set(reasons) <= {KEPT, *DROP_REASONS}
        kept = [p.lstrip("Ġ▁").strip().casefold() for p, r in zip(pieces, reasons) if r == KEPT]
        assert kept == filter_words(pieces, n, vocabulary=vocab), (pieces, n, reasons)


def test_filter_reasons_name_each_rule():
    pieces = [" red", "ing", " Red", " the", " 42", " ox", " zzxq", "", " circle", " blue"]
    assert filter_reasons(pieces, 2, vocabulary={"red", "circle", "blue"}) == [
        KEPT, "subword", "duplicate", "stopword", "non-alpha", "too short", "not in vocabulary", "special token",
        KEPT, "over n_words"]


# --- the export ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("browser") / "run"
    kw = toy_run()
    page = write_run_report(out, **kw)
    return page, json.loads((out / "report.json").read_text()), kw


def test_export_stats_follow_their_definitions(toy):
    _, ex, kw = toy
    V = kw["V_train"].numpy()
    assert ex["schema"] == SCHEMA and ex["n_concepts"] == K and ex["n_train"] == 40 and ex["n_test"] == 12
    for k, c in enumerate(ex["concepts"]):
        v = V[:, k]
        assert c["frac_nonzero"] == pytest.approx((v > 0).mean(), abs=1e-5)
        assert c["max_act"] == pytest.approx(v.max(), abs=1e-5)
        if (v > 0).any():
            assert c["median_act"] == pytest.approx(np.median(v[v > 0]), abs=1e-5)
        # X_k,MAS in order, v_k / max v_k
        assert [s["index"] for s in c["top_activations"]] == [100 + r for r in kw["concepts"].top_indices[k]]
        for s in c["top_activations"]:
            assert s["ratio"] == pytest.approx(s["value"] / c["max_act"], abs=1e-4)
        # histogram counts: every non-zero train activation, once
        assert sum(c["freq_hist_data_bar_heights"]) == int((v != 0).sum())
        assert sum(c["freq_hist_data_bar_heights_test"]) == int((kw["V_test"].numpy()[:, k] != 0).sum())
        assert len(c["freq_hist_data_bar_values"]) == len(c["freq_hist_data_bar_heights"])
    dead = ex["concepts"][3]
    assert dead["frac_nonzero"] == 0 and dead["median_act"] is None and dead["top_activations"] == [] \
        and dead["activations"] == []
    # Every number under its metric's label and table, described ones first; NaN left out (strict JSON);
    # a number no metric described still shows, under its key.
    assert [(m["key"], m["label"], m["table"], m["value"]) for m in ex["metrics"]] == [
        ("overlap", "Overlap", "Overlap of concept words", 0.25), ("stability", "Stability", "The dictionaries", 0.9),
        ("undescribed", "undescribed", "other", 3.0)]
    assert [m["summary"] for m in ex["metrics"]] == [True, False, False]


def test_export_words_and_artefacts(toy):
    _, ex, kw = toy
    c0, c1, c2 = ex["concepts"][:3]
    assert c0["words"] == ["red", "circle"] and c0["pos_str"][:3] == [" red", "ing", " circle"]
    assert c0["pos_filter"][:6] == [KEPT, "subword", KEPT, "duplicate", "stopword", "non-alpha"]
    assert c1["pos_filter"][2:4] == ["too short", "not in vocabulary"]
    assert c2["pos_filter"][3:5] == ["over n_words", "over n_words"] and len(c2["words"]) == N_WORDS
    assert c0["pos_values"][:3] == [10.0, 9.0, 8.0]
    # Per-concept columns as the schema labels them, in its order; a concept without a value has no entry.
    assert [(x["label"], x["value"]) for x in c0["scores"]] == [
        ("stability |cos|", 0.9), ("matched value (train)", "colour = red"), ("matched value: test AUROC", 0.91)]
    assert [x["key"] for x in c2["scores"]] == ["stability_cos"]  # matched no value
    assert c1["scores"][0]["value"] == pytest.approx(0.8)
    assert ex["sort_keys"] == [{"key": "stability_cos", "label": "stability |cos|", "better": 0},
                               {"key": "recovery_auroc", "label": "matched value: test AUROC", "better": 0}]


def test_quantile_bins_cover_the_active_range_top_first():
    v = np.r_[np.zeros(50), np.linspace(0.1, 5.0, 100)]
    bins = quantile_bins(v, 5, 4, skip=[149, 148])
    assert len(bins) == 5 and not {148, 149} & set(bins[0]["rows"])  # the X_k,MAS rows are not shown again
    assert [b["bin_max"] for b in bins] == sorted((b["bin_max"] for b in bins), reverse=True)
    assert sum(b["bin_contains"] for b in bins) == pytest.approx(100 / 150, abs=1e-4)
    for b in bins:
        assert len(b["rows"]) == 4 and all(b["bin_min"] - 1e-4 <= v[r] <= b["bin_max"] + 1e-4 for r in b["rows"])
    assert quantile_bins(np.zeros(5), 5, 4) == [] and len(quantile_bins(np.r_[0, 0, 1.0], 5, 4)) == 1


def test_histogram_of_a_constant_activation_has_one_full_bin():
    h = histogram(np.r_[0.0, 2.0, 2.0], None, n_bins=4)
    assert sum(h["freq_hist_data_bar_heights"]) == 2 and h["freq_hist_data_bar_heights_test"] == [0] * 4


def test_local_interpretation_lists_only_active_concepts(toy):
    _, ex, kw = toy
    Vt = kw["V_test"].numpy()
    assert len(ex["local"]) == 12
    for i, s in enumerate(ex["local"]):
        expected = [k for k in np.argsort(-Vt[i], kind="stable")[:3] if Vt[i, k] > 0]
        assert [t["concept"] for t in s["top"]] == expected
        if expected:
            assert s["top"][0]["ratio"] == 1.0


# --- files ---------------------------------------------------------------------------------------------

def test_run_report_files_and_thumbnails(toy):
    page, ex, _ = toy
    out = page.parent
    text = page.read_text()
    assert page.name == "report.html" and "<script" in text
    assert "https://" not in text and text.count("http://") == text.count("http://www.w3.org/2000/svg")  # no network
    thumbs = sorted((out / "thumbs").glob("*.jpg"))
    assert thumbs and all(max(Image.open(t).size) <= 96 for t in thumbs)
    imgs = [s for c in ex["concepts"] for s in c["top_activations"] + [e for b in c["activations"] for e in b["examples"]]]
    missing = [s for s in imgs if s["index"] == 103]
    assert missing and all(s["image"] is None for s in missing)  # the sample without an image
    assert all((out / s["image"]).is_file() for s in imgs + ex["local"] if s["image"])


def test_thumbnails_are_drawn_once_into_the_cache_and_linked_by_later_runs(tmp_path):
    from coxlmm.report.browser.page import thumb_cache_dirs

    kw = toy_run()
    drawn: list[tuple[str, int]] = []

    def image(split: str, index: int):
        drawn.append((split, index))
        return kw["image"](split, index)

    cache = thumb_cache_dirs(tmp_path / "cache", {"train": {"name": "toy", "n": 40}, "test": {"name": "toy", "n": 12}})
    first = write_run_report(tmp_path / "a", **{**kw, "image": image}, thumb_cache=cache).parent
    n_first = len(drawn)
    second = write_run_report(tmp_path / "b", **{**kw, "image": image}, thumb_cache=cache).parent
    assert n_first and drawn[n_first:] == [("train", 103)]  # the second run draws only the image that failed
    thumbs = sorted(p.relative_to(first) for p in (first / "thumbs").glob("*.jpg"))
    assert thumbs == sorted(p.relative_to(second) for p in (second / "thumbs").glob("*.jpg"))
    assert all((first / t).read_bytes() == (second / t).read_bytes() for t in thumbs)
    assert (second / "report.json").read_text() == (first / "report.json").read_text()
    other = thumb_cache_dirs(tmp_path / "cache", {"train": {"name": "toy", "n": 41}})  # another dataset: its own
    assert other["train"] != cache["train"] and cache["train"] != cache["test"]
    third = write_run_report(tmp_path / "c", **{**kw, "image": image}, thumb_cache=cache, thumb_px=48).parent
    assert len(drawn) > n_first + 1 and all(max(Image.open(t).size) <= 48 for t in (third / "thumbs").glob("*.jpg"))


def test_inline_html_carries_its_thumbnails(toy):
    page, ex, _ = toy
    html = inline_report_html(page.parent)
    n = len({s["image"] for c in ex["concepts"] for s in c["top_activations"] if s["image"]})
    assert html.count('"thumbs/') >= n and "data:image/jpeg;base64," in html and 'id="coxlmm-images"' in html


def test_inline_html_goes_into_wandb_html_unchanged(toy):
    wandb = pytest.importorskip("wandb")
    html = inline_report_html(toy[0].parent)
    assert wandb.Html(html, inject=False, data_is_not_path=True).html == html


def test_a_script_end_tag_in_a_caption_cannot_break_the_page(tmp_path):
    kw = toy_run()
    kw["test"][0]["caption"] = "</script><script>alert(1)</script>"  # the local section shows test[0]
    text = write_run_report(tmp_path / "run", **kw).read_text()
    assert "</script><script>alert(1)" not in text and "<\\/script>" in text


def test_layer_dirs_get_a_top_page(tmp_path):
    layers = [Layer.of(l, 30) for l in ("norm", 12, 5)]
    for layer in layers:
        write_run_report(tmp_path / "run" / layer.dir, **toy_run(), up=True)
    top = write_layers_page(tmp_path / "run", layers).read_text()
    assert 'href="layer_5/report.html"' in top and 'href="layer_12/report.html"' in top
    assert top.index("layer_5/") < top.index("layer_12/") < top.index("layer_norm/")  # by index, the norm last
    assert ">layer norm</a>" in top
    assert '"up":"../report.html"' in (tmp_path / "run" / "layer_5" / "report.html").read_text()


def test_bad_rows_are_refused(tmp_path):
    kw = toy_run()
    kw["train"] = kw["train"][:-1]
    with pytest.raises(ValueError, match="39 train rows"):
        write_run_report(tmp_path / "run", **kw)


# --- bad input pages -------------------------------------------------------------------------------------

def test_failed_run_page_says_what_is_missing(tmp_path):
    page = write_failed_report(tmp_path / "3_method=nope", "CoxlmmError: method 'nope' is unknown",
                               [".hydra/config.yaml"])
    text = page.read_text()
    assert "No concepts in 3_method=nope" in text and "method &#39;nope&#39; is unknown" in text
    missing = text[text.index('id="missing"'):text.index('id="present"')]
    assert "metrics.json" in missing and "concepts.json" in missing and ".hydra/config.yaml" not in missing


def test_sweep_index_lists_failed_jobs_and_links_reports(tmp_path):
    (tmp_path / "fig.png").write_bytes(b"")
    jobs = [
        {"job": "0_method=pca", "overrides": "method=pca", "status": "ok", "error": None,
         "metrics": {"overlap": 0.3, "cs_top1_mean": 0.61, "other": 1.0}, "report": "0_method=pca/report.html"},
        {"job": "1_method=nope", "overrides": "method=nope", "status": "failed", "error": "boom <b>", "metrics": {},
         "report": "1_method=nope/report.html"},
        {"job": "2_method=nmf", "overrides": "method=nmf", "status": "unfinished", "error": None, "metrics": {},
         "report": None},
    ]
    text = write_sweep_index(tmp_path, jobs=jobs, tables_md="# Sweep `x`\n\n## Overlap\n\n| token | PCA |\n| --- | --- |\n| dog | 0.3 |\n",
                             figures=[tmp_path / "fig.png", tmp_path / "absent.png"]).read_text()
    failed = text[text.index('id="failed"'):text.index('id="jobs"')]
    assert "1_method=nope" in failed and "2_method=nmf" in failed and "0_method=pca" not in failed
    assert "boom &lt;b&gt;" in failed
    assert 'href="0_method=pca/report.html"' in text and "3 jobs: 1 ok, 1 failed, 1 unfinished" in text
    assert re.search(r"<th>token</th>\s*<th>PCA</th>", text) and 'src="fig.png"' in text and "absent.png" not in text
    assert "<h1>Sweep" in text and "<h2>Sweep" not in text  # tables.md's own title is the page's


def test_sweep_index_refuses_an_unknown_status(tmp_path):
    from coxlmm.errors import CoxlmmError

    with pytest.raises(CoxlmmError, match="status"):
        write_sweep_index(tmp_path, jobs=[{"job": "0", "status": "done"}], tables_md=None, figures=[])


def test_metric_columns_and_markdown():
    jobs = [{"metrics": {"Overlap": 1, "CS (test)": 3}}, {"metrics": {"zzz": 2, "Overlap": 4}}]
    assert metric_columns(jobs) == ["Overlap", "CS (test)", "zzz"]
    text = markdown_html("## T `x`\nText with `code` & <b>\n\n| a | `b<` |\n|---|:-:|\n| 1 | 2 |")
    assert text.startswith("<h3>T <code>x</code></h3>\n<p>Text with <code>code</code> &amp; &lt;b&gt;</p>\n")
    table = text[text.index("<table"):]
    assert table.startswith('<table class="dataframe grid md">') and "<b>" not in text
    assert re.findall(r"<t[hd]>(.*?)</t[hd]>", table) == ["a", "<code>b&lt;</code>", "1", "2"]

"""The concept browser in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by Selenium) loads the pages from file:// and checks what a reader sees.

Pages: a toy run (write_run_report on synthetic tensors), its inlined (W&B) variant, a sweep index
with a failed job, and a real two-layer run of the `coxlmm` command on the tiny LLaVA.
Without Chromium these tests are skipped with a message naming the packages.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from coxlmm.report.browser import inline_report_html, write_failed_report, write_run_report, write_sweep_index
from tests.report.browser_fixtures import K, toy_run

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("COXLMM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("COXLMM_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900"]


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium Python package (pip install -e '.[dev]')")
    if missing:
        pytest.skip(f"the browser tests need Debian's chromium and chromium-driver packages "
                    f"(apt-get install -y chromium chromium-driver); missing: {', '.join(missing)}")
    profile = tempfile.mkdtemp(prefix="coxlmm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def load(driver, page: Path) -> None:
    """Open `page` from file:// and wait until every image has finished loading (or failed)."""
    driver.get(page.resolve().as_uri())
    deadline = time.monotonic() + 120  # a guard: a busy machine loads pages slowly
    while time.monotonic() < deadline:
        if driver.execute_script("return document.readyState === 'complete' && "
                                 "Array.from(document.images).every(i => i.complete)"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{page} did not finish loading its images in 120 s")


def console_errors(driver) -> list[str]:
    """Console messages at error level since the last call (the log is cleared on read)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def broken_images(driver) -> list[str]:
    return driver.execute_script("return Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.src)")


def visible_concepts(driver) -> list[int]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('section.concept'))"
        ".filter(c => c.offsetParent !== null).map(c => +c.id.split('-')[1])")


def check_run_page(driver, page: Path, n_concepts: int) -> None:
    load(driver, page)
    assert len(driver.find_elements("css selector", "section.concept")) == n_concepts
    assert driver.execute_script("return document.images.length") > 0
    assert broken_images(driver) == []
    assert console_errors(driver) == []


@pytest.fixture(scope="module")
def toy_page(tmp_path_factory):
    return write_run_report(tmp_path_factory.mktemp("toy") / "run", **toy_run())


def test_run_report_renders_filters_sorts_and_links(browser, toy_page):
    check_run_page(browser, toy_page, K)
    assert len(browser.find_elements("css selector", "figure .noimg")) >= 1  # train sample 103 has no image
    kept = browser.execute_script("return Array.from(document.querySelectorAll('#concept-0 .tok.kept')).map(t => t.firstChild.textContent)")
    assert kept == ["red", "circle"]
    dropped = browser.find_element("css selector", "#concept-0 .tok.dropped")
    assert dropped.get_attribute("title").startswith("dropped: ")

    search = browser.find_element("id", "search")
    search.send_keys("blue")
    assert visible_concepts(browser) == [1]
    assert "showing 1 of 4" in browser.find_element("id", "count").text
    search.clear()
    search.send_keys("zzz-no-such-word")
    assert visible_concepts(browser) == []
    # A local-interpretation bar links to its concept, and reveals it although the filter hides it.
    bar = browser.find_element("css selector", "#local .bars a")
    target = int(bar.get_attribute("data-concept"))
    browser.execute_script("arguments[0].click()", bar)
    assert browser.execute_script("return location.hash") == f"#concept-{target}"
    assert target in visible_concepts(browser) and visible_concepts(browser) == list(range(K))

    from selenium.webdriver.support.ui import Select

    export = json.loads((toy_page.parent / "report.json").read_text())
    Select(browser.find_element("id", "sort")).select_by_value("density")
    by_density = sorted(range(K), key=lambda k: (-export["concepts"][k]["frac_nonzero"], k))
    assert visible_concepts(browser) == by_density
    Select(browser.find_element("id", "sort")).select_by_value("score:recovery_auroc")  # a column the metric offers
    assert visible_concepts(browser)[:2] == [0, 1]  # AUROC 0.91, 0.83; the rest have no recovery
    labels = browser.execute_script("return Array.from(document.querySelectorAll('#concept-0 .concept-scores td:first-child')).map(t => t.textContent)")
    assert labels == ["stability |cos|", "matched value (train)", "matched value: test AUROC"]
    assert console_errors(browser) == []


def test_inlined_page_needs_no_files(browser, toy_page, tmp_path):
    page = tmp_path / "elsewhere.html"  # no thumbs/ next to it: every image must come inlined
    page.write_text(inline_report_html(toy_page.parent))
    check_run_page(browser, page, K)
    assert all(src.startswith("data:image/jpeg") for src in
               browser.execute_script("return Array.from(document.images).map(i => i.src)"))


def test_sweep_index_lists_failures_and_opens_a_job(browser, toy_page, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(toy_page.parent, sweep / "0_method=semi_nmf")
    write_failed_report(sweep / "1_method=nope", "CoxlmmError: unknown method 'nope'", [".hydra/config.yaml"])
    jobs = [{"job": "0_method=semi_nmf", "overrides": "method=semi_nmf", "status": "ok", "error": None,
             "metrics": {"overlap": 0.25}, "report": "0_method=semi_nmf/report.html"},
            {"job": "1_method=nope", "overrides": "method=nope", "status": "failed",
             "error": "CoxlmmError: unknown method 'nope'", "metrics": {}, "report": "1_method=nope/report.html"}]
    index = write_sweep_index(sweep, jobs=jobs, tables_md="## Overlap\n\n| token | Semi-NMF |\n| --- | --- |\n| circle | 0.25 |",
                              figures=[])
    load(browser, index)
    assert "1_method=nope" in browser.find_element("id", "failed").text
    assert browser.find_element("css selector", "table.md").text.startswith("token")
    assert console_errors(browser) == []
    browser.execute_script("arguments[0].click()", browser.find_element("css selector", "#failed a"))
    assert "Missing" in browser.find_element("tag name", "body").text  # the failed job's page
    assert "metrics.json" in browser.find_element("id", "missing").text
    load(browser, index)
    browser.find_element("link text", "0_method=semi_nmf").click()
    assert browser.current_url.endswith("0_method=semi_nmf/report.html")
    check_run_page(browser, Path(browser.current_url.removeprefix("file://")), K)


# --- a real run of the `coxlmm` command ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_run(tiny_llava_path, tmp_path_factory):
    from tests.extraction.conftest import make_folder_dataset
    from tests.fixtures.tiny_models import load_card

    tmp = tmp_path_factory.mktemp("browser_cli")
    card = load_card(tiny_llava_path)
    data = make_folder_dataset(tmp / "data", n_train=12, n_test=4, words=(card.single_piece_word,))
    run_dir = tmp / "run"
    cmd = [sys.executable, "-m", "coxlmm", "model=hf", f"model.name_or_path={tiny_llava_path}", "data=folder",
           f"data.root={data}", f"paths.cache_dir={tmp / 'cache'}", "extraction.max_new_tokens=20",
           "method.n_concepts=3", f"token={card.single_piece_word}", "layers=[-1,0]", f"hydra.run.dir={run_dir}",
           "logger=none"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir


def test_a_real_run_gets_a_browser_per_layer(browser, cli_run):
    for layer in (0, 2):
        assert (cli_run / f"layer_{layer}" / "report.json").is_file()
    load(browser, cli_run / "report.html")
    links = [a.get_attribute("href") for a in browser.find_elements("css selector", "#layers a")]
    assert [Path(h).parent.name for h in links] == ["layer_0", "layer_2"]
    assert console_errors(browser) == []
    browser.find_element("link text", "layer 2").click()
    check_run_page(browser, cli_run / "layer_2" / "report.html", 3)
    assert len(browser.find_elements("css selector", "#local .card")) == 4  # every test sample

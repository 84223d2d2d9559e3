"""The path real users take, on the tiny LLaVA: cached jobs load no weights, jobs share one extraction
through the store's lock, a killed extractor resumes bit for bit, the model stays where its stage
put it, `device_map` works (and is refused with DDP), the noise source is the position-matched
forward, and bad input gets one clear paragraph."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from coxlmm.errors import CoxlmmError
from coxlmm.extraction import ExtractionSettings, extract, extract_noise
from coxlmm.io import entry_lock
from tests.extraction.conftest import make_folder_dataset

REPO = Path(__file__).resolve().parents[1]
TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def coxlmm(*overrides, timeout=300, multirun=False, env=None):
    cmd = [sys.executable, "-m", "coxlmm", *(["-m"] if multirun else []), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env or ENV)


# Loaded first by a job's interpreter (sitecustomize): any attempt to load a model's weights fails. The
# weights themselves cannot be spoilt to prove it, since their fingerprint is in the features' key.
REFUSE_WEIGHTS = """
import transformers.modeling_utils as mu
def _refuse(cls, *args, **kwargs):
    raise RuntimeError("this job loaded model weights")
mu.PreTrainedModel.from_pretrained = classmethod(_refuse)
"""


@pytest.fixture(scope="module")
def model_copy(tiny_llava_path, tmp_path_factory):
    """A private copy of the tiny LLaVA."""
    dst = tmp_path_factory.mktemp("model") / "tiny_llava"
    shutil.copytree(tiny_llava_path, dst)
    return dst


def base_args(model, data, cache):
    return ["model=hf", f"model.name_or_path={model}", "data=folder", f"data.root={data}",
            f"paths.cache_dir={cache}", "extraction.max_new_tokens=20", "extraction.batch_size=4",
            "method.n_concepts=3", "token=dog", "figures=false", "report=false", "print_summary=false"]


def metrics_of(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in m.items() if not k.startswith("seconds_")}


def test_a_sweep_over_cached_features_loads_no_weights(model_copy, tmp_path):
    data = make_folder_dataset(tmp_path / "data", n_train=12, n_test=4, words=("dog",))
    args = base_args(model_copy, data, tmp_path / "cache")
    before = coxlmm(*args, "method=pca", "layers=[0]", f"hydra.run.dir={tmp_path / 'before'}", "logger=none")
    assert before.returncode == 0, before.stderr[-3000:]
    refuse = tmp_path / "refuse_weights"
    refuse.mkdir()
    (refuse / "sitecustomize.py").write_text(REFUSE_WEIGHTS)
    env = {**ENV, "PYTHONPATH": os.pathsep.join(p for p in (str(refuse), ENV.get("PYTHONPATH")) if p)}
    sweep = tmp_path / "sweep"
    out = coxlmm(*args, "method=semi_nmf,pca", "method.n_concepts=2,3", "layers=[0],[-1]", "logger=none",
                 f"hydra.sweep.dir={sweep}", multirun=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = [p.parent for p in sweep.rglob("metrics.json")]
    assert len(jobs) == 8
    assert "loading model" not in out.stdout + out.stderr and "no model weights loaded" in out.stdout + out.stderr
    same = next(p for p in jobs if "method=pca" in p.name and "n_concepts=3" in p.name and "layers=[0]" in p.name)
    assert metrics_of(same) == metrics_of(tmp_path / "before")


def test_two_processes_share_one_extraction(tiny_llava_path, tmp_path):
    data = make_folder_dataset(tmp_path / "data", n_train=24, n_test=0, words=("dog",))
    args = base_args(tiny_llava_path, data, tmp_path / "cache") + ["logger=none", "metrics=core", "test_split="]
    cmds = [[sys.executable, "-m", "coxlmm", *args, f"hydra.run.dir={tmp_path / f'job{i}'}"] for i in (0, 1)]
    procs = [subprocess.Popen(c, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in cmds]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(l[-2000:] for l in logs)
    extracted = [("extraction folder:" in l) for l in logs]
    assert sorted(extracted) == [False, True], logs  # one job ran the model, the other waited and read
    assert "features cached" in logs[extracted.index(False)]
    assert metrics_of(tmp_path / "job0") == metrics_of(tmp_path / "job1")
    (entry,) = [p for p in (tmp_path / "cache" / "features").iterdir() if p.is_dir()]
    assert json.loads((entry / "manifest.json").read_text())["n_extracted"] == 24


KILL_SCRIPT = """
import sys, threading
from coxlmm.data.folder import ImageFolderCaptions
from coxlmm.extraction import ExtractionSettings, extract
from coxlmm.extraction.store import FeatureStore
from coxlmm.models.hf import HFVisionLM

write_shard = FeatureStore.write_shard

def write_then_stop(self, *args, **kwargs):  # the first shard lands, then the job stops where it is
    write_shard(self, *args, **kwargs)
    print("SHARD", flush=True)
    threading.Event().wait()

FeatureStore.write_shard = write_then_stop
lmm = HFVisionLM(name_or_path=sys.argv[1])
ds = ImageFolderCaptions(sys.argv[2], split="train")
extract(lmm, ds, "dog", [-1], ExtractionSettings(batch_size=2, max_new_tokens=20), sys.argv[3],
        {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False})
print("DONE")
"""


def test_kill_9_after_the_first_shard_then_rerun_gives_the_same_z_bit_for_bit(tiny_llava_path, tmp_path, caplog):
    from coxlmm.data.folder import ImageFolderCaptions
    from coxlmm.models.hf import HFVisionLM

    data = make_folder_dataset(tmp_path / "data", n_train=12, n_test=0, words=("dog",))
    script = tmp_path / "extract.py"
    script.write_text(KILL_SCRIPT)
    root = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_llava_path), str(data), str(root)], cwd=REPO,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # the job stops itself after its first shard (a condition, not a race with a fast machine)
        assert proc.stdout.readline().strip() == "SHARD", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (entry,) = [p for p in root.iterdir() if p.is_dir()]
    assert not (entry / "manifest.json").exists() and len(list(entry.glob("shard-*.json"))) == 1
    lmm = HFVisionLM(name_or_path=str(tiny_llava_path))
    ds = ImageFolderCaptions(str(data), split="train")
    s = ExtractionSettings(batch_size=2, max_new_tokens=20)
    # The killed job ran with one thread (ENV); a matmul split over other thread counts may differ in the
    # last bit, so the resumed and the fresh extraction run with one thread as well.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with caplog.at_level("INFO", logger="coxlmm.io"):
            resumed = extract(lmm, ds, "dog", [-1], s, str(root), TRAINER, wait_report_s=1.0)
        assert not [r for r in caplog.records if "waiting for" in r.getMessage()], \
            "the dead job's lock was released by the OS: no wait"
        assert resumed.dir == entry and resumed.manifest()["n_extracted"] < 12  # it resumed, not restarted
        fresh = extract(lmm, ds, "dog", [-1], s, str(tmp_path / "fresh"), TRAINER)
    finally:
        torch.set_num_threads(threads)
    Z_res, r_res = resumed.load([2])
    Z_new, r_new = fresh.load([2])
    assert [r["index"] for r in r_res] == [r["index"] for r in r_new] == list(range(12))
    assert torch.equal(Z_res[2], Z_new[2])


WAIT_SCRIPT = """
import logging, signal, sys
from pathlib import Path
from coxlmm.io import entry_lock
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal, even if SIGINT came in ignored
logging.basicConfig(filename=sys.argv[2], level=logging.INFO)
with entry_lock(Path(sys.argv[1]), "an entry", wait_report_s=0.2):
    print("HELD", flush=True)
"""

HOLD_SCRIPT = """
import sys, time
from pathlib import Path
from coxlmm.io import entry_lock
release = Path(sys.argv[2])
with entry_lock(Path(sys.argv[1]), "an entry"):
    print("HELD", flush=True)
    while not release.exists():  # held until the test says so: no fixed duration
        time.sleep(0.02)
"""


def wait_for(condition, what: str, timeout_s: float = 300.0) -> None:
    """Poll `condition()` until it holds (a busy machine only makes this slower, never wrong)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.02)


def test_a_waiting_job_names_its_holder_and_ctrl_c_leaves_the_entry_untouched(tmp_path, caplog):
    """Conditions, not sleeps: the holder holds until the test releases it, and the test releases it (or
    sends Ctrl-C) only once the waiter has said that it waits."""
    import logging

    entry = tmp_path / "store" / "abc"
    script = tmp_path / "hold.py"
    script.write_text(HOLD_SCRIPT)
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, str(script), str(entry), str(release)], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "HELD"

    class ReleaseOnWait(logging.Handler):  # the waiter's first "waiting for" line lets the holder go
        def emit(self, record):
            if "waiting for the test entry" in record.getMessage():
                release.touch()

    store_log = logging.getLogger("coxlmm.io")
    handler = ReleaseOnWait()
    store_log.addHandler(handler)
    try:
        with caplog.at_level("INFO", logger="coxlmm.io"):
            with entry_lock(entry, "the test entry", wait_report_s=0.2):
                pass
    finally:
        store_log.removeHandler(handler)
    assert holder.wait(timeout=300) == 0
    msgs = [r.getMessage() for r in caplog.records if "waiting for the test entry" in r.getMessage()]
    assert msgs and f"pid {holder.pid}" in msgs[0] and "since" in msgs[0]

    # Ctrl-C while waiting: the waiter stops; nothing of the entry changed.
    release.unlink()
    holder = subprocess.Popen([sys.executable, str(script), str(entry), str(release)], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "HELD"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in entry.parent.iterdir())
    waiter_log = tmp_path / "waiter.log"  # the waiter's own file: nothing else writes it
    waiter = subprocess.Popen([sys.executable, "-c", WAIT_SCRIPT, str(entry), str(waiter_log)], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: waiter_log.exists() and "waiting for an entry" in waiter_log.read_text(),
                 "the waiter's 'waiting for' line")
        waiter.send_signal(signal.SIGINT)
        out, err = waiter.communicate(timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert waiter.returncode != 0 and "HELD" not in out and "KeyboardInterrupt" in err
    assert f"pid {holder.pid}" in waiter_log.read_text()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in entry.parent.iterdir()) == before


# --- placement ---------------------------------------------------------------------------------------
def test_the_model_is_not_a_submodule_of_the_stage_and_device_map_works_but_not_with_ddp(tiny_llava_path, tmp_path):
    from coxlmm.data.folder import ImageFolderCaptions
    from coxlmm.extraction.lightning import ExtractionModule
    from coxlmm.models.hf import HFVisionLM

    data = make_folder_dataset(tmp_path / "data", n_train=6, n_test=0, words=("dog",))
    ds = ImageFolderCaptions(str(data), split="train")
    plain = HFVisionLM(name_or_path=str(tiny_llava_path))
    module = ExtractionModule(plain, "dog", [0], 20)
    assert list(module.parameters()) == [], "Lightning's teardown .cpu() must not reach the model"
    s = ExtractionSettings(batch_size=2, max_new_tokens=20)
    Z_plain, _ = extract(plain, ds, "dog", [-1], s, str(tmp_path / "a"), TRAINER).load([0, 3])
    sharded = HFVisionLM(name_or_path=str(tiny_llava_path), device_map="auto")
    Z_map, _ = extract(sharded, ds, "dog", [-1], s, str(tmp_path / "b"), TRAINER).load([0, 3])
    for l in (0, 3):  # 3 = the final norm's output
        torch.testing.assert_close(Z_map[l], Z_plain[l])
    with pytest.raises(CoxlmmError, match="device_map.*processes"):
        extract(sharded, ds, "dog", [-1], s, str(tmp_path / "c"),
                {**TRAINER, "devices": 2, "strategy": "ddp_spawn"})


def test_the_norm_layer_holds_the_final_norm_of_the_last_block(tiny_llava_path, tmp_path):
    from coxlmm.data.folder import ImageFolderCaptions
    from coxlmm.models.hf import HFVisionLM

    lmm = HFVisionLM(name_or_path=str(tiny_llava_path))
    data = make_folder_dataset(tmp_path / "data", n_train=4, n_test=0, words=("dog",))
    ds = ImageFolderCaptions(str(data), split="train")
    store = extract(lmm, ds, "dog", ["norm"], ExtractionSettings(batch_size=2, max_new_tokens=20),
                    str(tmp_path / "s"), TRAINER)
    Z, _ = store.load([2, 3])
    torch.testing.assert_close(Z[3], lmm.final_norm(Z[2]), atol=1e-5, rtol=1e-5)


# --- the noise source --------------------------------------------------------------------------------
def test_the_noise_source_is_the_teacher_forced_forward_with_a_noise_image_and_the_prefix(tiny_llava_path, tmp_path):
    from coxlmm.data.folder import ImageFolderCaptions
    from coxlmm.extraction.lightning import noise_image
    from coxlmm.models.hf import HFVisionLM

    lmm = HFVisionLM(name_or_path=str(tiny_llava_path))
    data = make_folder_dataset(tmp_path / "data", n_train=5, n_test=0, words=("dog",))
    ds = ImageFolderCaptions(str(data), split="train")
    s = ExtractionSettings(batch_size=3, max_new_tokens=20)
    store = extract(lmm, ds, "dog", [-1], s, str(tmp_path / "s"), TRAINER)
    noise = extract_noise(lmm, store, ds, s, str(tmp_path / "s"), images="noise", seed=7, trainer=TRAINER)
    real = extract_noise(lmm, store, ds, s, str(tmp_path / "s"), images="real", seed=7, trainer=TRAINER)
    layers = list(range(lmm.num_layers + 1))
    Z, recs = store.load(layers)
    Zn, recs_n = noise.load(layers)
    Zr, _ = real.load(layers)
    assert [r["index"] for r in recs_n] == [r["index"] for r in recs]
    for i, rec in enumerate(recs[:2]):
        image = noise_image(ds[rec["index"]].image.size, 7, rec["index"])
        gen = torch.tensor([rec["prefix_ids"] + rec["token_ids"][:1]])
        ref = lmm.teacher_forced_states(lmm.prepare([image]), gen, layers)
        for l in layers:
            torch.testing.assert_close(Zn[l][i], ref[l][0, rec["position"]], atol=1e-4, rtol=1e-4)
    for l in layers:  # the real images' states: the extraction itself
        torch.testing.assert_close(Zr[l], Z[l], atol=1e-4, rtol=1e-4)
        assert not torch.allclose(Zn[l], Z[l], atol=1e-3)
    assert noise.key != real.key


# --- bad input ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_setup(tiny_llava_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    data = make_folder_dataset(tmp / "data", n_train=6, n_test=2, words=("dog",))
    return tmp, base_args(tiny_llava_path, data, tmp / "cache") + ["logger=none"]


@pytest.mark.parametrize("overrides, message", [
    (["extraction.batch_size=0"], "extraction.batch_size=0 is invalid"),
    pytest.param(["extraction.batch_size=-3"], "extraction.batch_size=-3 is invalid", marks=pytest.mark.slow),
    pytest.param(["layers=[]"], "layers=[] is empty", marks=pytest.mark.slow),
    pytest.param(["layers=[mid]"], "layer 'mid' is out of range", marks=pytest.mark.slow),
])
def test_bad_runtime_input_is_one_paragraph(cli_setup, overrides, message):
    tmp, args = cli_setup
    out = coxlmm(*args, f"hydra.run.dir={tmp / 'bad'}", *overrides)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_layers_naming_one_block_twice_are_analysed_once(cli_setup):
    tmp, args = cli_setup
    run = tmp / "dup"
    out = coxlmm(*args, "layers=[-1,2,0,0]", f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "names the same block more than once" in out.stdout + out.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert {k.split("/")[0] for k in metrics if "/" in k} == {"layer_2", "layer_0"}
    concepts = json.loads((run / "layer_2" / "concepts.json").read_text())
    assert metrics["n_train"] == 6 and sum(len(c["top_samples"]) > 0 for c in concepts["concepts"]) >= 1


def test_a_failed_job_leaves_a_wandb_run_marked_failed_with_its_config(cli_setup):
    from tests.report.wandb_reader import offline_run

    tmp, args = cli_setup
    run = tmp / "failed"
    out = coxlmm(*[a for a in args if a not in ("logger=none", "report=false")], "logger=wandb", "token=zebra",
                 "extraction.require_gt=false", f"hydra.run.dir={run}")
    assert out.returncode == 2 and "no sample selected for token 'zebra'" in out.stderr
    wb = offline_run(run)
    assert wb["exit_code"] == 1 and wb["config"]["token"] == "zebra"
    assert wb["summary"]["coxlmm/status"] == "failed" and "zebra" in wb["summary"]["coxlmm/error"]
    assert "no sample selected for token" in (run / "report.html").read_text()  # the failed run's page


def test_dead_concepts_are_reported_with_the_numbers_and_a_working_alpha():
    from coxlmm.concepts import build_dictionary
    from coxlmm.pipeline import dead_concepts_note

    g = torch.Generator().manual_seed(0)
    Z = 0.3 * torch.nn.functional.normalize(torch.randn(200, 32, generator=g) + 2.0, dim=1)  # ‖z‖ = 0.3
    d = build_dictionary("semi_nmf", n_concepts=8, alpha=1.0).fit(Z)
    note = dead_concepts_note(d, Z, d.V_train)
    assert "8 of 8 concepts are dead" in note and "median ‖z‖ = 0.3" in note
    alpha = float(note.split("try method.alpha=")[1].split(" ")[0])
    alive = build_dictionary("semi_nmf", n_concepts=8, alpha=alpha).fit(Z)
    assert dead_concepts_note(alive, Z, alive.V_train) == ""


PAPER_RUN = ["noise.images=real", "metrics=paper", "scorer=embedded", "seed=7"]  # a seed no other test fits


@pytest.fixture(scope="module")
def paper_run(cli_setup):
    """One `metrics=paper` run (every fit of a job: the dictionary, the stability refit, the Noise-Imgs
    dictionary), none of them in the module's fit cache yet: (run dir, its log)."""
    tmp, args = cli_setup
    run = tmp / "real"
    out = coxlmm(*args, *PAPER_RUN, f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    return run, out.stdout + out.stderr


def test_noise_imgs_with_the_real_images_scores_the_same_as_the_method(paper_run):
    """noise.images=real: the 'noise' source is each test sample's own image with its own prefix, i.e.
    the extraction itself, so the Noise-Imgs column must equal the method's (today's first-token path
    gave 0.504 against 0.817)."""
    run, _ = paper_run
    m = json.loads((run / "metrics.json").read_text())
    for key in ("cs_top1_mean", "bs_top1_mean"):
        assert m[f"noise_imgs_{key}"] == pytest.approx(m[key], abs=1e-4), key


def test_a_cached_job_loads_no_model_weights_and_refits_no_dictionary(cli_setup, paper_run):
    """The same job again: its features, readout and fits are cached, so it loads no model and fits nothing
    (each of its five fits comes from the fit cache: the dictionary, the stability refit and the Noise-Imgs
    dictionary of each of the 3 noise draws), and its metrics are the first run's."""
    tmp, args = cli_setup
    first, first_log = paper_run
    assert first_log.count("fit: semi_nmf") + first_log.count("fit cache: semi_nmf") == 5  # (real noise = Z: cached)
    assert first_log.count("fit: semi_nmf") >= 2
    again = coxlmm(*args, *PAPER_RUN, f"hydra.run.dir={tmp / 'again'}")
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "loading model" not in log and "no model weights loaded" in log
    assert "fit: " not in log and log.count("fit cache: semi_nmf") == 5
    assert metrics_of(tmp / "again") == metrics_of(first)


NOT_IN_A_CACHED_JOB = ("scipy.optimize", "matplotlib", "pandas", "wandb", "lightning")

# Loaded first by a job's interpreter (sitecustomize): loading a tokenizer fails.
REFUSE_TOKENIZERS = """
import transformers
def _refuse(*args, **kwargs):
    raise RuntimeError("this job loaded a tokenizer")
transformers.AutoTokenizer.from_pretrained = _refuse
"""


def test_a_cached_job_imports_only_what_its_stages_need(cli_setup, paper_run):
    """A cached job with the default metrics, figures and page loads no tokenizer (the readout's table of every
    id's piece and the records' decoded prefixes stand for it) and imports none of scipy.optimize (the small
    assignment solver), matplotlib, pandas, W&B or Lightning (the loggers run in their own process; logger=none
    here, so that one process writes the import log, -X importtime). A Hugging Face model's job still imports
    transformers to describe the model (its config); the embedded DePALM-mini's does not (bench/cached_job.py)."""
    import re

    tmp, args = cli_setup
    site = tmp / "refuse_tokenizers"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(REFUSE_TOKENIZERS)
    env = {**ENV, "PYTHONPATH": os.pathsep.join(p for p in (str(site), ENV.get("PYTHONPATH")) if p)}
    run = tmp / "imports"
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "coxlmm", *args, "seed=7", "figures=true",
                          "report=true", f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=300, cwd=REPO,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no model weights loaded" in out.stderr + out.stdout
    imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", out.stderr, re.M))
    assert "torch" in imported and "sitecustomize" in imported  # the log was read, the refusal was in place
    assert (run / "report.html").is_file() and (run / "concept_grid.png").is_file()  # a whole job ran
    assert not {m for m in imported if any(m == p or m.startswith(p + ".") for p in NOT_IN_A_CACHED_JOB)}


def test_a_saved_dictionary_is_reused_on_its_layer_and_refused_on_another_before_any_model_runs(cli_setup):
    tmp, args = cli_setup
    first = tmp / "fit"
    assert coxlmm(*args, "layers=[0]", f"hydra.run.dir={first}").returncode == 0
    saved = first / "dictionary.safetensors"
    again = coxlmm(*args, "layers=[0]", f"dictionary_path={saved}", f"hydra.run.dir={tmp / 'reuse'}")
    assert again.returncode == 0, again.stderr[-2000:]
    words = lambda run: [c["words"] for c in json.loads((run / "concepts.json").read_text())["concepts"]]  # noqa: E731
    assert words(tmp / "reuse") == words(first)
    other = coxlmm(*args, "layers=[-1]", f"dictionary_path={saved}", f"hydra.run.dir={tmp / 'other'}")
    assert other.returncode == 2 and "fitted on another layer" in other.stderr
    assert "loading model" not in other.stdout + other.stderr

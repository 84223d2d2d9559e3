"""A job's thread budget: the CPUs it is given, shared with the jobs its launcher runs beside it.

Two torch processes that each take every core of a 2-core machine slow each other down about 6x
(OpenMP threads spin while they wait for the cores), so each job sizes its threads at its start:

    usable CPUs   min(os.cpu_count(), the process's CPU affinity, its cgroup CPU quota)
    parallel jobs the launcher's jobs running at once on those CPUs: hydra/launcher=joblib runs n_jobs
                  of them (-1: one per CPU); a submitit task (slurm, local) gets its `cpus_per_task`
                  (SLURM also pins it there, which the affinity already shows); the basic launcher and
                  a single run: 1
    threads       usable CPUs // parallel jobs (at least 1), at most OMP_NUM_THREADS when the environment
                  sets it (the user's, joblib's for its workers, Lightning's for CPU DDP ranks), or the
                  config key `threads` when set

and applies it in-process, through the libraries' own calls: `torch.set_num_threads` (ATen's OpenMP
pool and MKL), `torch.set_num_interop_threads`, and threadpoolctl for the BLAS/OpenMP pools already
loaded (numpy's OpenBLAS). Environment variables are read only when a library loads, so they cannot
resize a pool that exists; `OPENBLAS_NUM_THREADS` / `MKL_NUM_THREADS` are set (unless the user set them)
for libraries loaded later and for child processes. `OMP_NUM_THREADS` is left alone: Lightning's CPU
DDP divides the CPUs among its ranks only when it is unset. The CLI also sets `OMP_WAIT_POLICY=PASSIVE`
(unless set) before torch loads OpenMP: jobs started apart, which no launcher divides, then lose far less
to each other (measured beside other agents' processes on 2 cores, a Semi-NMF fit of 100 iterations with
2 threads: 457 s spinning, 23 s passive, 30 s with 1 thread).

Data-loader workers of the model stages (`extraction.num_workers`): `null` sizes them from the budget
(0 on the CPU, where the model's threads are the budget; threads − 1, at most 8, when the model runs on
an accelerator); an explicit number above the budget is lowered to it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from coxlmm.errors import CoxlmmError

log = logging.getLogger(__name__)

MAX_LOADER_WORKERS = 8
LATE_LOADED_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # see the module doc for OMP_NUM_THREADS


@dataclass(frozen=True)
class ThreadBudget:
    cpus: int  # usable CPUs of this process
    parallel_jobs: int  # the launcher's jobs sharing them
    threads: int  # torch intra-op / OpenMP / BLAS threads of this job
    interop: int  # torch inter-op threads
    why: str  # where the numbers come from, for the log

    def describe(self) -> str:
        return (f"{self.threads} thread(s) (torch intra-op, OpenMP, BLAS; inter-op {self.interop}): {self.why}")


# --- what the process is given (pure functions of what the OS says, so tests can fake it) -----------------
def quota_cpus(cpu_max: str | None) -> float | None:
    """CPUs of a cgroup v2 `cpu.max` line ("<quota> <period>", "max <period>"), or of a v1 "quota period"
    pair; None when there is no quota."""
    if not cpu_max:
        return None
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    quota, period = int(parts[0]), int(parts[1])
    return quota / period if quota > 0 and period > 0 else None


def read_cpu_max() -> str | None:
    """The cgroup CPU quota of this process as "<quota> <period>" (v2, then v1), None when unlimited or unknown."""
    v2 = Path("/sys/fs/cgroup/cpu.max")
    v1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    try:
        if v2.is_file():
            return v2.read_text().strip()
        if v1[0].is_file() and v1[1].is_file():
            return f"{v1[0].read_text().strip()} {v1[1].read_text().strip()}"
    except OSError:
        pass
    return None


def usable_cpus(cpu_count: int | None, affinity: set[int] | None, cpu_max: str | None) -> tuple[int, str]:
    """min(CPUs, affinity, ceil(quota)) and a phrase saying which limits apply."""
    limits = {"cpu_count": cpu_count or 1}
    if affinity is not None:
        limits["affinity"] = len(affinity)
    quota = quota_cpus(cpu_max)
    if quota is not None:
        limits["cgroup quota"] = max(1, math.ceil(quota))
    n = max(1, min(limits.values()))
    said = ", ".join(f"{k} {v}" for k, v in limits.items())
    return n, f"{n} usable CPU(s) ({said})"


def probe_cpus() -> tuple[int, str]:
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return usable_cpus(os.cpu_count(), affinity, read_cpu_max())


# --- the launcher's parallel jobs -------------------------------------------------------------------------
def launcher_share(launcher: Mapping[str, Any] | None, multirun: bool, cpus: int) -> tuple[int, int | None, str]:
    """(jobs running at once on these CPUs, a per-job CPU cap or None, a phrase) for Hydra's launcher config."""
    if not multirun or not launcher:
        return 1, None, "a single run"
    target = str(launcher.get("_target_", ""))
    name = target.rsplit(".", 1)[-1]
    if "joblib" in target.lower():
        n = int(launcher.get("n_jobs") or -1)
        jobs = n if n > 0 else max(1, cpus + 1 + n)  # joblib's rule: -1 = every CPU, -2 = all but one, ...
        return jobs, None, f"{jobs} job(s) at once ({name}, n_jobs={n})"
    if "submitit" in target.lower():
        per_task = launcher.get("cpus_per_task")
        if per_task:
            return 1, int(per_task), f"a submitit task ({name}, cpus_per_task={per_task})"
        return 1, None, f"a submitit task ({name})"
    return 1, None, f"one job at a time ({name})"


def jobs_at_once(launcher: Mapping[str, Any] | None, multirun: bool, cpus: int) -> int:
    """How many jobs of the sweep run at the same time, on any machine (the model stages divide the target
    tokens of `extraction.tokens` among them): joblib's n_jobs, submitit's array_parallelism (submitit_local:
    every job at once), 1 for the basic launcher and a single run."""
    if not multirun or not launcher:
        return 1
    target = str(launcher.get("_target_", "")).lower()
    if "joblib" in target:
        return launcher_share(launcher, multirun, cpus)[0]
    if "submitit" in target:
        return int(launcher.get("array_parallelism") or 256)
    return 1


def plan(threads: int | None, cpus: tuple[int, str], launcher: Mapping[str, Any] | None = None,
         multirun: bool = False, omp_num_threads: str | None = None) -> ThreadBudget:
    """The budget of one job (pure: every input is given; `omp_num_threads`: the environment's value)."""
    n, said = cpus
    jobs, cap, how = launcher_share(launcher, multirun, n)
    if omp_num_threads and omp_num_threads.strip().isdigit() and int(omp_num_threads) > 0:
        cap = int(omp_num_threads) if cap is None else min(cap, int(omp_num_threads))
        how += f", OMP_NUM_THREADS={int(omp_num_threads)}"
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise CoxlmmError(f"threads={threads!r} is invalid: use null (sized from the CPUs this job is given) or a "
                              "positive number of threads, e.g. threads=1.")
        return ThreadBudget(n, jobs, threads, min(threads, 2), f"threads={threads} set; {said}")
    share = max(1, n // jobs)
    if cap is not None:
        share = max(1, min(share, cap))
    return ThreadBudget(n, jobs, share, min(share, 2), f"{said} / {how}")


def loader_workers(configured: int | None, budget: ThreadBudget, on_accelerator: bool) -> int:
    """DataLoader workers of the model stages (see the module doc)."""
    if configured is None:
        return min(MAX_LOADER_WORKERS, budget.threads - 1) if on_accelerator else 0
    if configured > budget.threads:
        log.warning("extraction.num_workers=%d is more than this job's %d thread(s): using %d", configured,
                    budget.threads, budget.threads)
        return budget.threads
    return configured


# --- applying it ------------------------------------------------------------------------------------------
def apply(budget: ThreadBudget) -> None:
    """Size this process's thread pools (see the module doc)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(budget.threads)
    try:
        torch.set_num_interop_threads(budget.interop)
    except RuntimeError:  # inter-op work already ran in this process (a reused joblib worker): it keeps its pool
        pass
    threadpool_limits(limits=budget.threads)
    for var in LATE_LOADED_VARS:
        os.environ.setdefault(var, str(budget.threads))


def hydra_launcher() -> tuple[Mapping[str, Any] | None, bool]:
    """(the launcher's config, whether this is a multirun job) of the current Hydra job; (None, False) outside."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None, False
    hc = HydraConfig.get()
    return OmegaConf.to_container(hc.launcher, resolve=True), hc.mode == RunMode.MULTIRUN


def sweep_jobs_at_once() -> int:
    """`jobs_at_once` of the current Hydra job (1 outside Hydra)."""
    launcher, multirun = hydra_launcher()
    return jobs_at_once(launcher, multirun, probe_cpus()[0])


def size_job(threads: int | None) -> ThreadBudget:
    """Plan and apply this Hydra job's budget, and say so in its log."""
    launcher, multirun = hydra_launcher()
    budget = plan(threads, probe_cpus(), launcher, multirun, os.environ.get("OMP_NUM_THREADS"))
    apply(budget)
    log.info("thread budget: %s", budget.describe())
    return budget

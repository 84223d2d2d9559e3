"""The thread budget (coxlmm/threads.py): a job's threads are the CPUs it is given (affinity, cgroup quota)
divided among the jobs its launcher runs at once; the config key `threads` overrides; the data-loader
workers follow. The OS's answers are faked here, so these tests say the same on any machine."""

from __future__ import annotations

import pytest
import torch

from coxlmm.errors import CoxlmmError
from coxlmm.threads import apply, launcher_share, loader_workers, plan, quota_cpus, usable_cpus

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def test_usable_cpus_are_the_tightest_of_count_affinity_and_cgroup_quota():
    assert usable_cpus(64, set(range(64)), "max 100000")[0] == 64
    assert usable_cpus(64, {0, 1, 2, 3}, "max 100000")[0] == 4  # taskset / SLURM pinning
    n, said = usable_cpus(64, set(range(64)), "250000 100000")  # docker --cpus=2.5
    assert n == 3 and "cgroup quota 3" in said
    assert usable_cpus(8, {0, 1}, "50000 100000")[0] == 1  # never 0
    assert quota_cpus("max 100000") is None and quota_cpus("-1 100000") is None and quota_cpus(None) is None
    assert quota_cpus("200000 100000") == 2.0


@pytest.mark.parametrize("cpus, launcher, multirun, threads", [
    (2, {"_target_": JOBLIB, "n_jobs": 3}, True, 1),  # three jobs on two cores: one thread each, never 0
    (2, {"_target_": JOBLIB, "n_jobs": 2}, True, 1),  # the paper presets on this machine
    (16, {"_target_": JOBLIB, "n_jobs": 4}, True, 4),
    (16, {"_target_": JOBLIB, "n_jobs": -1}, True, 1),  # joblib's -1: one job per CPU
    (16, {"_target_": JOBLIB, "n_jobs": -5}, True, 1),  # 12 jobs at once
    (8, {"_target_": JOBLIB, "n_jobs": -7}, True, 4),  # 2 jobs at once
    (64, {"_target_": SLURM, "cpus_per_task": 8}, True, 8),  # a SLURM task: its cpus_per_task
    (16, {"_target_": LOCAL, "cpus_per_task": 1}, True, 1),  # submitit_local: every task on this machine
    (16, {"_target_": BASIC}, True, 16),  # jobs one after another
    (16, {"_target_": JOBLIB, "n_jobs": 4}, False, 16),  # a single run: no launcher to share with
])
def test_the_budget_divides_the_cpus_among_the_launchers_parallel_jobs(cpus, launcher, multirun, threads):
    budget = plan(None, usable_cpus(cpus, set(range(cpus)), None), launcher, multirun)
    assert budget.threads == threads
    assert 1 <= budget.interop <= budget.threads
    jobs = launcher_share(launcher, multirun, cpus)[0]
    assert budget.threads * jobs <= max(cpus, jobs)  # the jobs at once never hold more threads than CPUs


def test_affinity_and_quota_are_divided_too():
    cpus = usable_cpus(64, set(range(8)), "max 100000")  # 8 pinned CPUs of a 64-core node
    assert plan(None, cpus, {"_target_": JOBLIB, "n_jobs": 2}, True).threads == 4
    cpus = usable_cpus(64, set(range(64)), "600000 100000")  # a 6-CPU container
    budget = plan(None, cpus, {"_target_": JOBLIB, "n_jobs": 3}, True)
    assert budget.threads == 2 and "cgroup quota 6" in budget.why and "3 job(s) at once" in budget.why


def test_an_omp_num_threads_in_the_environment_caps_the_budget():
    cpus = usable_cpus(16, set(range(16)), None)
    assert plan(None, cpus, omp_num_threads="3").threads == 3
    assert plan(None, cpus, {"_target_": JOBLIB, "n_jobs": 8}, True, omp_num_threads="3").threads == 2
    assert plan(None, cpus, omp_num_threads="").threads == 16  # unset or empty: no cap
    assert plan(5, cpus, omp_num_threads="3").threads == 5  # the config key is the last word


def test_the_threads_key_overrides_and_bad_values_are_refused():
    cpus = usable_cpus(16, set(range(16)), None)
    budget = plan(3, cpus, {"_target_": JOBLIB, "n_jobs": 8}, True)
    assert budget.threads == 3 and "threads=3 set" in budget.describe()
    for bad in (0, -1, "two", True):
        with pytest.raises(CoxlmmError, match="threads=.* is invalid"):
            plan(bad, cpus)


def test_data_loader_workers_follow_the_budget():
    cpus = usable_cpus(16, set(range(16)), None)
    four = plan(None, cpus, {"_target_": JOBLIB, "n_jobs": 4}, True)
    assert loader_workers(None, four, on_accelerator=False) == 0  # the model's threads are the budget
    assert loader_workers(None, four, on_accelerator=True) == 3  # the main process keeps one
    assert loader_workers(None, plan(None, usable_cpus(64, set(range(64)), None)), on_accelerator=True) == 8
    assert loader_workers(2, four, on_accelerator=False) == 2
    assert loader_workers(12, four, on_accelerator=True) == 4  # more workers than threads: lowered


def test_apply_sizes_torchs_pool_and_the_loaded_blas():
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    try:
        apply(plan(None, usable_cpus(1, {0}, None)))
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    finally:
        torch.set_num_threads(before)
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=before)

"""coxlmm's SAEs against SAELens' on SAELens' synthetic benchmark data, at equal data and epochs.

    make bench-saelens                       # the full table (issue 23's sizes; tens of minutes)
    .venv-bench/bin/python bench/sae_vs_saelens.py --train 20000 --test 5000 --epochs 5   # minutes

Runs in the bench venv (`make bench-saelens` makes `.venv-bench/`: torch 2.13.0 CPU first, then
sae-lens 6.54.12 and coxlmm), never in the main environment. One thread for both libraries.

Data: SAELens' `SyntheticModel` (the SynthSAEBench generator) with 1,024 ground-truth features in
128 dimensions, Zipfian firing probabilities (0.4 down to 0.02, exponent 0.7), a hierarchy (64
roots, 2–4 children, depth 2, half of the sibling sets mutually exclusive), low-rank correlations
(rank 16, scale 0.1), orthogonalised feature vectors, magnitudes 1 ± 0.15, a bias of norm 1; seed 0.
`--train` states for training (the same fixed set for both libraries, reshuffled each epoch) and
`--test` held-out states for the evaluation.

SAEs: width 256, k = 7, for TopK, BatchTopK and Matryoshka BatchTopK (prefix widths 32, 64, 128,
256 in both libraries). Each library uses its own recipe: SAELens its synthetic-training defaults
(`SAETrainer`, Adam 3e-4 constant, batch 1024, AuxK coefficient 1, dead window 1,000 steps);
coxlmm its method configs (`conf/method/*_sae.yaml`).

Evaluation, the same code for both (SAELens' `sae_lens.synthetic.evals` functions, on the test
states): MCC (Hungarian matching of decoder rows to ground-truth features, mean |cos|),
uniqueness, F1 of each latent as a detector of its best-matching feature, explained variance,
L0, dead latents (never firing on the test states) and the fit's wall time. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def synthetic_model(seed: int = 0):
    from sae_lens.synthetic import (HierarchyConfig, LowRankCorrelationConfig, OrthogonalizationConfig,
                                    SyntheticModel, SyntheticModelConfig, ZipfianFiringProbabilityConfig)

    cfg = SyntheticModelConfig(
        num_features=1024, hidden_dim=128,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=0.7, max_prob=0.4, min_prob=0.02),
        hierarchy=HierarchyConfig(total_root_nodes=64, branching_factor=(2, 4), max_depth=2,
                                  mutually_exclusive_portion=0.5),
        correlation=LowRankCorrelationConfig(rank=16, correlation_scale=0.1, seed=seed),
        orthogonalization=OrthogonalizationConfig(num_steps=100),
        std_firing_magnitudes=0.15, mean_firing_magnitudes=1.0, bias=1.0, seed=seed)
    return SyntheticModel(cfg)


def evaluate(latents: torch.Tensor, recon: torch.Tensor, decoder: torch.Tensor, X: torch.Tensor,
             F: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """SAELens' metrics for latents (N, K), reconstructions (N, B), decoder rows (K, B) of test
    states X (N, B) with ground-truth feature activations F (N, 1024) and directions gt (1024, B)."""
    from sae_lens.synthetic import compute_classification_metrics, feature_uniqueness, mean_correlation_coefficient

    X64 = X.double()
    var = float((X64 - X64.mean(0)).pow(2).sum())
    return {
        "MCC": mean_correlation_coefficient(decoder, gt),
        "uniqueness": feature_uniqueness(decoder, gt),
        "F1": compute_classification_metrics(latents, F, decoder, gt).f1_score,
        "EV": 1 - float((X64 - recon.double()).pow(2).sum()) / var,
        "L0": float((latents != 0).sum(1).float().mean()),
        "dead": int(((latents != 0).sum(0) == 0).sum()),
    }


class FixedData:
    """SAELens' data provider over a fixed training set: a seeded reshuffle every epoch, batches of
    `batch` rows, the last partial batch of an epoch dropped (SAELens needs full batches)."""

    def __init__(self, X: torch.Tensor, batch: int, seed: int = 0) -> None:
        self.X, self.batch, self.gen = X, batch, torch.Generator().manual_seed(seed)
        self._it = iter(())

    def _epoch(self):
        order = torch.randperm(len(self.X), generator=self.gen)
        for i in range(0, len(order) - self.batch + 1, self.batch):
            yield self.X[order[i : i + self.batch]]

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        try:
            return next(self._it)
        except StopIteration:
            self._it = self._epoch()
            return next(self._it)


def saelens_sae(arch: str, d_in: int, width: int, k: int):
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (MatryoshkaBatchTopKTrainingSAE,
                                                        MatryoshkaBatchTopKTrainingSAEConfig)
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    if arch == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=width, k=k))
    if arch == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=width, k=k))
    widths = [width // 8, width // 4, width // 2, width]
    return MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=d_in, d_sae=width, k=k, matryoshka_widths=widths))


def run_saelens(arch: str, X: torch.Tensor, epochs: int, width: int, k: int, batch: int = 1024,
                lr: float = 3e-4):
    """Train with SAELens' SAETrainer (its synthetic-training defaults) on the fixed set; returns
    (encode, decode, decoder rows, seconds)."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    sae = saelens_sae(arch, X.shape[1], width, k)
    steps = epochs * (len(X) // batch)
    cfg = SAETrainerConfig(
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        total_training_samples=steps * batch, device="cpu", autocast=False, lr=lr, lr_end=lr,
        lr_scheduler_name="constant", lr_warm_up_steps=0, adam_beta1=0.9, adam_beta2=0.999,
        lr_decay_steps=0, n_restart_cycles=1, train_batch_size_samples=batch,
        dead_feature_window=1000, feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
        n_batches_for_norm_estimate=1000)
    t = time.perf_counter()
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=FixedData(X, batch),
                         save_checkpoint_fn=lambda *_a, **_k: None)
    trained = trainer.fit()
    seconds = time.perf_counter() - t
    trained.eval()
    with torch.no_grad():
        if hasattr(trained, "topk_threshold") and arch != "topk":
            # BatchTopK's inference is a JumpReLU at the learnt threshold (SAELens saves it so).
            theta = float(trained.topk_threshold)

            def encode(x):
                _, pre = trained.encode_with_hidden_pre(x)
                a = pre.relu()
                return a * (a > theta)
        else:
            encode = trained.encode
    return encode, trained.decode, trained.W_dec.detach(), seconds


def run_coxlmm(arch: str, X: torch.Tensor, epochs: int, width: int, k: int, **overrides):
    from coxlmm.concepts import build_dictionary

    name = {"topk": "topk_sae", "batchtopk": "batchtopk_sae", "matryoshka": "matryoshka_sae"}[arch]
    params = dict(n_concepts=width, k=k, max_epochs=epochs, **overrides)
    if arch == "matryoshka":
        params["group_sizes"] = [width // 8, width // 8, width // 4, width // 2]
    d = build_dictionary(name, **params)
    t = time.perf_counter()
    d.fit(X)
    seconds = time.perf_counter() - t
    return d.encode, d.decode, d.U, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=200_000)
    ap.add_argument("--test", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, nargs="+", default=[10])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--k", type=int, default=7)
    ap.add_argument("--archs", nargs="+", default=["topk", "batchtopk", "matryoshka"])
    ap.add_argument("--libs", nargs="+", default=["saelens", "coxlmm"])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override coxlmm method keys, e.g. lr=1e-3 batch_size=512")
    args = ap.parse_args()
    torch.set_num_threads(1)
    overrides = {kv.split("=")[0]: float(kv.split("=")[1]) if "." in kv or "e" in kv.split("=")[1]
                 else int(kv.split("=")[1]) for kv in args.set}
    load = os.getloadavg()[0]

    model = synthetic_model()
    torch.manual_seed(1)
    X, F = model.sample_with_features(args.train + args.test)
    X, F = X.float(), F.float()
    Xtr, Xte, Fte = X[: args.train], X[args.train :], F[args.train :]
    gt = model.feature_dict.feature_vectors.detach().float()
    print(f"SynthSAEBench-style data: {args.train} train / {args.test} test states, B = {X.shape[1]}, "
          f"{gt.shape[0]} features, true L0 {float((F > 0).sum(1).float().mean()):.2f}; width {args.width}, "
          f"k = {args.k}; 1 thread; load average at start {load:.2f}", flush=True)
    head = f"{'method':<32} {'epochs':>6} {'MCC':>6} {'uniq':>6} {'F1':>6} {'EV':>6} {'L0':>6} {'dead':>5} {'time':>8}"
    print(head)
    names = {"topk": "TopK", "batchtopk": "BatchTopK", "matryoshka": "Matryoshka BatchTopK"}
    for arch in args.archs:
        for epochs in args.epochs:
            for lib in args.libs:
                if lib == "saelens":
                    enc, dec, W, sec = run_saelens(arch, Xtr, epochs, args.width, args.k)
                else:
                    enc, dec, W, sec = run_coxlmm(arch, Xtr, epochs, args.width, args.k, **overrides)
                with torch.no_grad():
                    lat = enc(Xte).float()
                    rec = dec(lat).float()
                m = evaluate(lat, rec, W.float(), Xte, Fte, gt)
                label = f"{'SAELens' if lib == 'saelens' else 'coxlmm'} {names[arch]}"
                print(f"{label:<32} {epochs:>6} {m['MCC']:>6.3f} {m['uniqueness']:>6.3f} {m['F1']:>6.3f} "
                      f"{m['EV']:>6.3f} {m['L0']:>6.2f} {m['dead']:>5d} {sec:>7.1f}s", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f} (times measured under that load)")


if __name__ == "__main__":
    main()

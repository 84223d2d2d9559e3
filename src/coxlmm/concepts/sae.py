"""Sparse autoencoders as dictionaries: the shared model, training loop and interface.

Notation (the paper's, row-major): Z (M, B) features, U (K, B) = the decoder's rows (unit norm),
V (M, K) >= 0 the codes, b (B,) the decoder bias, so Z ≈ V U + b. Training sees the features
centred and scaled by one number s (the RMS norm of the centred training rows),
x = (z − z̄) / s, so that one learning rate suits features of any scale; U, V and b are
reported in the units of Z (V = s · codes, b = z̄ + s · b_dec).

    pre  = (x − b_dec) W_encᵀ + b_enc        (n, K)   encoder, W_enc (K, B) initialised to U
    a    = ReLU(pre)
    c    = sparsify(a)                        (n, K)   TopK per sample, or BatchTopK (subclasses)
    x̂    = c U + b_dec                        decoder, rows of U kept at unit norm
    loss = ‖x − x̂‖² / ‖x − x̄‖² (FVU) + aux_coef · AuxK

The TopK recipe (Gao et al. 2024; as in SAELens and sparsify): b_dec starts at the mean (0 on the
centred x), W_enc at U; after each step the rows of U are renormalised, and the gradient component
parallel to each row is removed before the step. Adam, gradients clipped to norm 1, the learning
rate from transformers' warmup-stable-decay schedule (`warmup_fraction` of the steps linear
warm-up, then constant, then linear decay to 0 over the last `decay_fraction`).

AuxK, so that no latent stays dead. A latent is dead when it has not fired for
`dead_after_epochs` of training samples. The `aux_k` dead latents with the largest
*pre-activations* (before the ReLU, as SAELens and Gao et al.: a latent whose pre-activation is
negative on every sample still gets a gradient) reconstruct the residual e = x − x̂ (held
fixed), and ‖e − c_aux U‖², in the units of the main loss, is added with weight
aux_coef · min(1, n_dead / aux_k). The recipe before issue 23 took the top dead latents of the
ReLU'd activations (a latent negative everywhere got exactly zero gradient, so once dead it stayed
dead) with weight 1/32 on a residual already small: 9–14 of 256 latents stayed dead at any number
of epochs. `tests/concepts/test_sae.py::test_auxk_revives_latents_the_old_recipe_leaves_dead`
plants that situation.

Data. Training reads a `Rows` source (`coxlmm.extraction.reader`): a tensor in memory, or a
feature-store entry's shards streamed from disk. Each epoch reads blocks of `shuffle_rows`
consecutive rows (all rows when null and the source is in memory; 64 batches otherwise) in a
seeded random order, shuffles the rows of a block and cuts batches, so memory is one block
whatever M. In memory with the default, that is one global shuffle per epoch. The mean and scale
come from one pass over the rows first; the BatchTopK threshold from passes after training. An
in-memory fit and a streamed fit of the same rows with the same seed see the same batches.

Training runs through Lightning's `Trainer.fit` on the given accelerator, `devices` and `strategy`
(e.g. `ddp` on several GPUs: every rank reads the same seeded order and takes every W-th batch),
seeded: the initial decoder and the order of the samples come from `seed`.
"""

from __future__ import annotations

import abc
import logging
import math
import warnings
from typing import Any, Callable, ClassVar, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from coxlmm.concepts.base import COMPUTE_DTYPE, Dictionary, check_number, stream_blocks
from coxlmm.directions import random_directions
from coxlmm.errors import CoxlmmError
from coxlmm.extraction.reader import Rows, TensorRows, check_batch_size
from coxlmm.trainer import build_trainer


def feature_scale(rows: Rows, block: int) -> tuple[torch.Tensor, float]:
    """(mean z̄ (B,) float64, s = RMS ‖z − z̄‖) over the rows, in one pass (float64, shifted by the
    first row so that a large common offset does not cancel digits)."""
    n, total, sq, z0 = 0, None, 0.0, None
    for z in stream_blocks(rows, block, torch.float64):
        if z0 is None:
            z0 = z[0].clone()
            total = torch.zeros_like(z0)
        d = z - z0
        total += d.sum(0)
        sq += float(d.pow(2).sum())
        n += len(z)
    mean_d = total / n
    var = max(sq / n - float(mean_d.pow(2).sum()), 0.0)
    return z0 + mean_d, math.sqrt(var) or 1.0


class _Epochs(IterableDataset):
    """One epoch of (x, ‖x‖²) batches from a `Rows` source (see the module doc): blocks of
    `block` rows in a seeded order, rows shuffled within a block, the remainder carried into the
    next block. Under DDP (W ranks) every rank draws the same order and keeps batches r, r+W, …,
    the same number on every rank."""

    def __init__(self, rows: Rows, mean: torch.Tensor, scale: float, batch_size: int, block: int,
                 gen: torch.Generator) -> None:
        self.rows, self.mean, self.scale = rows, mean, scale
        self.batch_size, self.block, self.gen = batch_size, block, gen

    def _world(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        n = math.ceil(self.rows.n_rows / self.batch_size)
        world = self._world()[1]
        return n if world == 1 else n // world

    def __iter__(self):
        rank, world = self._world()
        n_keep = len(self) * world
        self.rows.check()
        M, S, bs = self.rows.n_rows, self.block, self.batch_size
        order = torch.randperm(math.ceil(M / S), generator=self.gen).tolist()
        pending, i = None, 0
        for j, b in enumerate(order):
            z = self.rows.read(b * S, min((b + 1) * S, M))
            z = z[torch.randperm(len(z), generator=self.gen)]
            if pending is not None and len(pending):
                z = torch.cat([pending, z])
            last = j == len(order) - 1
            end = len(z) if last else len(z) // bs * bs
            for start in range(0, end, bs):
                if i < n_keep and i % world == rank:
                    x = ((z[start : start + bs].to(torch.float64) - self.mean) / self.scale).float()
                    if not bool(torch.isfinite(x).all()):
                        raise CoxlmmError("the features contain non-finite values (NaN or inf); "
                                          "dictionaries need finite features.")
                    yield x, x.pow(2).sum(1)
                i += 1
            pending = z[end:]


class SAEModule(L.LightningModule):
    """The autoencoder and its training step, on x = (z − z̄) / s (centred, unit variance).

    When K < B the squared errors are computed without forming any (n, B) residual: for codes c (n, K),
    with P = x Uᵀ, q = b Uᵀ and G = U Uᵀ,
        ‖x − b − c U‖² = ‖x‖² − 2 x·b + ‖b‖² − 2 c·(P − q) + (c G)·c,
    exact, so a step costs one (n, B) × (B, 2K + 1) product forward (x [W_enc; U; b]ᵀ) and its
    transpose backward; everything else is K-sized. The same expansion gives each Matryoshka
    prefix (a slice of c, P, q and G) and the AuxK error. When K >= B (wide dictionaries of small
    features) the residual x − b − c U is formed directly instead, which then costs less (K² > K B).
    The expansion subtracts terms as large
    as ‖x‖² to leave the error, which half precision would lose, so the step runs outside
    autocast, in the parameters' dtype (float32 unless the Trainer's precision is "64-true").
    """

    def __init__(self, sae: "SparseAutoencoder", B: int, n_rows: int, gen: torch.Generator,
                 total_steps: int) -> None:
        super().__init__()
        K = sae.n_concepts
        self.sae, self.total_steps = sae, total_steps
        U = random_directions(K, B, gen)
        self.W_dec = torch.nn.Parameter(U)  # U, rows kept at unit norm
        self.W_enc = torch.nn.Parameter(U.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(K))
        self.b_dec = torch.nn.Parameter(torch.zeros(B))  # x is centred: the mean is already out
        self.register_buffer("since_fired", torch.zeros(K))  # training samples since each latent fired
        self.dead_after = sae.dead_after_epochs * n_rows
        self.aux_k = sae.aux_k if sae.aux_k is not None else max(1, K // 2)
        self.losses: list[torch.Tensor] = []  # main loss (FVU) per step

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, x2 = batch
        with torch.autocast(x.device.type, enabled=False):
            return self._loss(x.to(self.W_dec.dtype), x2.to(self.W_dec.dtype))

    def _loss(self, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        K, B = self.W_dec.shape
        U, b = self.W_dec, self.b_dec
        gram = K < B  # the Gram form saves the (n, B) residual when B is the larger; else the direct one
        if gram:
            proj = x @ torch.cat([self.W_enc, U, b[None]]).T  # (n, 2K + 1)
            xW, P, xb = proj[:, :K], proj[:, K : 2 * K], proj[:, 2 * K]
            pre = xW - b @ self.W_enc.T + self.b_enc  # (x − b) W_encᵀ + b_enc
        else:
            xc = x - b
            pre = xc @ self.W_enc.T + self.b_enc
        c = self.sae.sparsify(torch.relu(pre))
        if gram:
            base = x2 - 2 * xb + b.pow(2).sum()  # ‖x − b‖² per row
            Pq, G = P - U @ b, U @ U.T  # (x − b) Uᵀ, U Uᵀ
            r2, main = self.sae.squared_errors(base, c, Pq, G)  # per row of the full model; loss
        else:
            r2, main, resid = self.sae.direct_errors(xc, c, U)
        loss = main
        fired = (c > 0).any(0)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            fired = fired.float()
            torch.distributed.all_reduce(fired)  # a latent that fired on any rank is alive
            fired = fired > 0
            n_seen = len(x) * torch.distributed.get_world_size()
        else:
            n_seen = len(x)
        self.since_fired += n_seen
        self.since_fired[fired] = 0
        dead = self.since_fired >= self.dead_after
        n_dead = int(dead.sum())
        if n_dead and self.sae.aux_coef > 0:
            k_aux = min(self.aux_k, n_dead)
            # The dead latents' largest pre-activations, negative ones included (see the module doc).
            vals, idx = torch.where(dead, pre, torch.full_like(pre, -torch.inf)).topk(k_aux, dim=1)
            c_aux = torch.zeros_like(pre).scatter(1, idx, vals)
            if gram:
                # ‖e − c_aux U‖² with e = x − b − c U held fixed: e Uᵀ = (x − b) Uᵀ − c (U_fixed Uᵀ).
                eU = P - b.detach() @ U.T - (c @ U).detach() @ U.T
                aux = (r2.detach() - 2 * (c_aux * eU).sum(1) + ((c_aux @ G) * c_aux).sum(1)).mean()
            else:
                aux = (resid.detach() - c_aux @ U).pow(2).sum(1).mean()
            loss = loss + self.sae.aux_coef * min(1.0, n_dead / self.aux_k) * aux
        self.losses.append(main.detach())
        return loss

    def configure_optimizers(self):
        from transformers import get_wsd_schedule

        opt = torch.optim.Adam(self.parameters(), lr=self.sae.lr)
        warmup = int(self.sae.warmup_fraction * self.total_steps)
        decay = int(self.sae.decay_fraction * self.total_steps)
        sched = get_wsd_schedule(opt, num_warmup_steps=warmup, num_decay_steps=decay,
                                 num_training_steps=self.total_steps, decay_type="linear")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        # Remove the gradient parallel to each decoder row: it would only change the row's norm.
        g, W = self.W_dec.grad, self.W_dec.detach()
        if g is not None:
            g -= (g * W).sum(1, keepdim=True) * W

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


class SparseAutoencoder(Dictionary):
    """A sparse autoencoder dictionary (see the module docstring); subclasses choose `sparsify`
    (training), `activate` (inference) and `squared_errors`."""

    nonnegative = True
    compute_dtype = torch.float32
    _state_names: ClassVar[tuple[str, ...]] = ("U", "W_enc", "b_enc", "b_dec", "scale")
    method: ClassVar[str] = "sae"  # for error messages

    def __init__(self, n_concepts: int, seed: int = 0, device: str = "cpu", name: str | None = None,
                 display_name: str | None = None, k: int = 5, max_epochs: int = 200,
                 batch_size: int = 256, lr: float = 4e-3, warmup_fraction: float = 0.0,
                 decay_fraction: float = 0.2, aux_k: int | None = None, aux_coef: float = 1.0,
                 dead_after_epochs: float = 1.0, shuffle_rows: int | None = None,
                 accelerator: str = "cpu", devices: Any = 1, strategy: str = "auto",
                 precision: Any = "32-true") -> None:
        super().__init__(n_concepts, seed, device, name, display_name)
        m = self.method
        self.k = check_number(m, "k", k, minimum=1, integer=True)
        if self.k > self.n_concepts:
            raise CoxlmmError(
                f"{m}: k={k} active latents per sample exceeds n_concepts={n_concepts} (the width); "
                f"use k <= K, or a wider dictionary (n_concepts >= {k})."
            )
        self.max_epochs = check_number(m, "max_epochs", max_epochs, minimum=1, integer=True)
        self.batch_size = check_number(m, "batch_size", batch_size, minimum=1, integer=True)
        self.lr = float(check_number(m, "lr", lr, strict=True))
        self.warmup_fraction = float(check_number(m, "warmup_fraction", warmup_fraction))
        self.decay_fraction = float(check_number(m, "decay_fraction", decay_fraction))
        if self.decay_fraction + self.warmup_fraction > 1:
            raise CoxlmmError(f"{m}: warmup_fraction={warmup_fraction} + decay_fraction={decay_fraction} "
                              "must be at most 1 (fractions of the training steps).")
        self.aux_k = None if aux_k is None else check_number(m, "aux_k", aux_k, minimum=1, integer=True)
        self.aux_coef = float(check_number(m, "aux_coef", aux_coef))
        self.dead_after_epochs = float(check_number(m, "dead_after_epochs", dead_after_epochs, strict=True))
        self.shuffle_rows = None if shuffle_rows is None else check_number(
            m, "shuffle_rows", shuffle_rows, minimum=1, integer=True)
        self.accelerator, self.devices, self.strategy, self.precision = \
            str(accelerator), devices, str(strategy), precision
        for n in ("W_enc", "b_enc", "b_dec", "scale"):
            setattr(self, n, None)
        self.losses_: list[float] = []  # training FVU per step of the last fit

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "max_epochs": self.max_epochs, "batch_size": self.batch_size,
                "lr": self.lr, "warmup_fraction": self.warmup_fraction,
                "decay_fraction": self.decay_fraction, "aux_k": self.aux_k, "aux_coef": self.aux_coef,
                "dead_after_epochs": self.dead_after_epochs, "shuffle_rows": self.shuffle_rows,
                "accelerator": self.accelerator, "devices": self.devices, "strategy": self.strategy,
                "precision": self.precision}

    # --- what varies ---------------------------------------------------------------------------
    @abc.abstractmethod
    def sparsify(self, a: torch.Tensor) -> torch.Tensor:
        """Training-time sparsity: a (n, K) >= 0 -> codes (n, K) with about k non-zeros per row."""

    @abc.abstractmethod
    def activate(self, a: torch.Tensor) -> torch.Tensor:
        """Inference-time sparsity, per sample: a (M, K) >= 0 -> codes (M, K)."""

    def squared_errors(self, base: torch.Tensor, c: torch.Tensor, Pq: torch.Tensor, G: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(‖x − b − c U‖² per row, training loss) from base = ‖x − b‖² (n,), codes c (n, K),
        Pq = (x − b) Uᵀ (n, K) and G = U Uᵀ (K, K); x has unit variance, so the mean is the FVU."""
        r2 = base - 2 * (c * Pq).sum(1) + ((c @ G) * c).sum(1)
        return r2, r2.mean()

    def direct_errors(self, xc: torch.Tensor, c: torch.Tensor, U: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(‖x − b − c U‖² per row, training loss, the residual (n, B)) from xc = x − b, formed
        directly (cheaper than `squared_errors` when K >= B)."""
        resid = xc - c @ U
        r2 = resid.pow(2).sum(1)
        return r2, r2.mean(), resid

    def calibrate(self, activations: Callable[[], Iterator[torch.Tensor]], n_rows: int) -> None:
        """After training: set inference state from the training activations, given as a function
        returning a fresh pass of blocks a (n_b, K) >= 0 (one call = one pass over the rows)."""

    # --- Dictionary ----------------------------------------------------------------------------
    def _fit(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._train(TensorRows(Z.cpu()), in_memory=True)
        return self.U, self._encode(Z)

    def _fit_stream(self, rows: Rows, block_rows: int = 4096) -> torch.Tensor:
        self._train(rows, in_memory=False)
        return self.U

    def _train(self, rows: Rows, in_memory: bool) -> None:
        M = rows.n_rows
        check_batch_size(self.batch_size, M, f"{self.method}: batch_size")
        block = self.shuffle_rows or (M if in_memory else 64 * self.batch_size)
        block = min(block, M)
        mean, scale = feature_scale(rows, block)
        gen = torch.Generator().manual_seed(self.seed)
        data = _Epochs(rows, mean, scale, self.batch_size, block, gen)
        module = SAEModule(self, rows.dim, M, gen, self.max_epochs * len(data))
        loader = DataLoader(data, batch_size=None)
        quiet = logging.getLogger("lightning.pytorch")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # no "GPU available" banners and tips at every fit
        try:
            with warnings.catch_warnings():
                for message in (".*does not have many workers.*", ".*`IterableDataset` has `__len__`.*",
                                r".*isinstance\(treespec, LeafSpec\).*", ".*Total length of `DataLoader`.*"):
                    warnings.filterwarnings("ignore", message=message)
                devices = {"accelerator": self.accelerator, "devices": self.devices, "strategy": self.strategy,
                           "precision": self.precision}
                trainer = build_trainer(devices, max_epochs=self.max_epochs, logger=False, gradient_clip_val=1.0,
                                        enable_checkpointing=False, enable_progress_bar=False,
                                        enable_model_summary=False, num_sanity_val_steps=0,
                                        use_distributed_sampler=False)
                trainer.fit(module, train_dataloaders=loader)
        finally:
            quiet.setLevel(level)
        self.losses_ = torch.stack(module.losses).float().cpu().tolist() if module.losses else []
        self.U = module.W_dec.detach().cpu().float()
        self.W_enc = module.W_enc.detach().cpu().float()
        self.b_enc = module.b_enc.detach().cpu().float()
        self.b_dec = (mean + scale * module.b_dec.detach().cpu().double()).float()
        self.scale = torch.tensor([scale], dtype=torch.float32)

        def activations() -> Iterator[torch.Tensor]:
            for z in stream_blocks(rows, block, torch.float32):
                yield self._pre(z).relu()

        self.calibrate(activations, M)

    def _pre(self, Z: torch.Tensor) -> torch.Tensor:
        """Pre-activations (M, K) of features Z in their own units."""
        s = self.scale.to(Z.device)
        return ((Z - self.b_dec.to(Z.device)) / s) @ self.W_enc.to(Z.device).T + self.b_enc.to(Z.device)

    def _encode(self, Z: torch.Tensor) -> torch.Tensor:
        return self.activate(self._pre(Z).relu()) * self.scale.to(Z.device)

    def _decode(self, V: torch.Tensor) -> torch.Tensor:
        return V @ self.U.to(COMPUTE_DTYPE) + self.b_dec.to(COMPUTE_DTYPE)


def topk_codes(a: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest entries of each row of a (n, K) >= 0, zero the rest."""
    vals, idx = a.topk(k, dim=1)
    return torch.zeros_like(a).scatter(1, idx, vals)


def batch_topk_codes(a: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k · n largest entries of a (n, K) >= 0 over the whole batch (BatchTopK)."""
    flat = a.flatten()
    vals, idx = flat.topk(min(k * len(a), flat.numel()))
    return torch.zeros_like(flat).scatter(0, idx, vals).view_as(a)


def kth_largest(blocks: Callable[[], Iterator[torch.Tensor]], n: int, bins: int = 1 << 16) -> float:
    """The n-th largest positive value over all blocks (0.0 when fewer are positive), exactly, with
    memory bounded by a block: three passes (the maximum; a histogram of (0, max]; the values of
    the one bin holding the answer)."""
    hi, n_pos = 0.0, 0
    for a in blocks():
        n_pos += int((a > 0).sum())
        hi = max(hi, float(a.max())) if a.numel() else hi
    if n_pos < n or hi <= 0:
        return 0.0
    counts = torch.zeros(bins, dtype=torch.float64)
    for a in blocks():
        v = a[a > 0].double()
        counts += torch.histc(v, bins=bins, min=0.0, max=hi)
    above = counts.flip(0).cumsum(0).flip(0)  # above[i] = values in bins i.. (histc's edges)
    i = int((above >= n).nonzero().max())  # the highest bin whose tail holds >= n values
    while True:  # exact counts at the bin's edges (histc may place an edge value either side)
        lo_edge = hi * i / bins
        hi_edge = hi * (i + 1) / bins if i + 1 < bins else math.inf
        n_higher, inside = 0, []
        for a in blocks():
            v = a.double().flatten()
            v = v[v > 0]
            n_higher += int((v >= hi_edge).sum())
            inside.append(v[(v >= lo_edge) & (v < hi_edge)])
        vals = torch.cat(inside).sort(descending=True).values
        if n_higher >= n:
            i += 1
        elif n_higher + len(vals) < n:
            i -= 1
        else:
            return float(vals[n - n_higher - 1])

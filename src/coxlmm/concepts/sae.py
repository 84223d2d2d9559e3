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

The standard recipe of TopK SAEs (Gao et al. 2024, "Scaling and evaluating sparse
autoencoders"; as in sparsify, SAELens, overcomplete): the decoder bias starts at the mean of
the features (b_dec = 0 on the centred x), W_enc at U; after each step the rows of U are
renormalised, and the gradient component parallel to each row is removed before the step (it
would only change the norm). AuxK: latents that have not fired for `dead_after_epochs` of
training samples are "dead"; the top `aux_k` of their activations reconstruct the residual
x − x̂ (decoder without bias), and that error, in FVU units and weighted by
min(1, n_dead / aux_k), is added with weight `aux_coef` (1/32), so dead latents get a gradient
towards what the live ones miss. Adam, constant learning rate, then linear decay to 0 over the
last `decay_fraction` of the steps.

Training runs through Lightning's `Trainer.fit` on the given accelerator (devices=1), seeded:
the initial decoder and the order of the samples come from `seed`.
"""

from __future__ import annotations

import abc
import logging
import math
import warnings
from typing import Any, ClassVar

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from coxlmm.concepts.base import COMPUTE_DTYPE, Dictionary, check_number
from coxlmm.errors import CoxlmmError


class _Batches(IterableDataset):
    """(x, ‖x‖²) for the rows of X (M, B) in a new seeded random order every epoch, `batch_size`
    rows at a time."""

    def __init__(self, X: torch.Tensor, batch_size: int, gen: torch.Generator) -> None:
        self.X, self.x2, self.batch_size, self.gen = X, X.pow(2).sum(1), batch_size, gen

    def __iter__(self):
        order = torch.randperm(len(self.X), generator=self.gen)
        for i in range(0, len(order), self.batch_size):
            rows = order[i : i + self.batch_size]
            yield self.X[rows], self.x2[rows]

    def __len__(self) -> int:
        return math.ceil(len(self.X) / self.batch_size)


class SAEModule(L.LightningModule):
    """The autoencoder and its training step, on x = (z − z̄) / s (centred, unit variance).

    The squared errors are computed without forming any (n, B) residual: for codes c (n, K),
    with P = x Uᵀ, q = b Uᵀ and G = U Uᵀ,
        ‖x − b − c U‖² = ‖x‖² − 2 x·b + ‖b‖² − 2 c·(P − q) + (c G)·c,
    exact, so a step costs one (n, B) × (B, 2K + 1) product forward (x [W_enc; U; b]ᵀ) and its
    transpose backward; everything else is K-sized. The same expansion gives each Matryoshka
    prefix (a slice of c, P, q and G) and the AuxK error. The expansion subtracts terms as large
    as ‖x‖² to leave the error, which half precision would lose, so the step runs outside
    autocast, in the parameters' dtype (float32 unless the Trainer's precision is "64-true").
    """

    def __init__(self, sae: "SparseAutoencoder", X: torch.Tensor, gen: torch.Generator,
                 total_steps: int) -> None:
        super().__init__()
        K, B = sae.n_concepts, X.shape[1]
        self.sae, self.total_steps = sae, total_steps
        U = torch.randn(K, B, generator=gen, dtype=torch.float32)
        U /= U.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(U)  # U, rows kept at unit norm
        self.W_enc = torch.nn.Parameter(U.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(K))
        self.b_dec = torch.nn.Parameter(torch.zeros(B))  # x is centred: the mean is already out
        self.register_buffer("since_fired", torch.zeros(K))  # training samples since each latent fired
        self.dead_after = sae.dead_after_epochs * len(X)
        self.aux_k = sae.aux_k if sae.aux_k is not None else max(1, K // 2)
        self.losses: list[torch.Tensor] = []  # main loss (FVU) per step

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, x2 = batch
        with torch.autocast(x.device.type, enabled=False):
            return self._loss(x.to(self.W_dec.dtype), x2.to(self.W_dec.dtype))

    def _loss(self, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        K = self.W_dec.shape[0]
        U, b = self.W_dec, self.b_dec
        proj = x @ torch.cat([self.W_enc, U, b[None]]).T  # (n, 2K + 1)
        xW, P, xb = proj[:, :K], proj[:, K : 2 * K], proj[:, 2 * K]
        a = torch.relu(xW - b @ self.W_enc.T + self.b_enc)  # ReLU((x − b) W_encᵀ + b_enc)
        c = self.sae.sparsify(a)
        base = x2 - 2 * xb + b.pow(2).sum()  # ‖x − b‖² per row
        Pq, G = P - U @ b, U @ U.T  # (x − b) Uᵀ, U Uᵀ
        r2, main = self.sae.squared_errors(base, c, Pq, G)  # per row of the full model; loss
        loss = main
        fired = (c > 0).any(0)
        self.since_fired += len(x)
        self.since_fired[fired] = 0
        dead = self.since_fired >= self.dead_after
        n_dead = int(dead.sum())
        if n_dead and self.sae.aux_coef > 0:
            k_aux = min(self.aux_k, n_dead)
            vals, idx = torch.where(dead, a, torch.full_like(a, -1.0)).topk(k_aux, dim=1)
            c_aux = torch.zeros_like(a).scatter(1, idx, vals.clamp_min(0))
            # ‖e − c_aux U‖² with e = x − b − c U held fixed: e Uᵀ = (x − b) Uᵀ − c (U_fixed Uᵀ).
            eU = P - b.detach() @ U.T - (c @ U).detach() @ U.T
            aux = (r2.detach() - 2 * (c_aux * eU).sum(1) + ((c_aux @ G) * c_aux).sum(1)).mean()
            loss = loss + self.sae.aux_coef * min(1.0, n_dead / self.aux_k) * aux
        self.losses.append(main.detach())
        return loss

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.sae.lr)
        decay_from = int((1 - self.sae.decay_fraction) * self.total_steps)
        span = max(1, self.total_steps - decay_from)

        def factor(step: int) -> float:
            return 1.0 if step < decay_from else max(0.0, (self.total_steps - step) / span)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
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
    (training), `activate` (inference) and `reconstruction_loss`."""

    nonnegative = True
    compute_dtype = torch.float32
    _state_names: ClassVar[tuple[str, ...]] = ("U", "W_enc", "b_enc", "b_dec", "scale")
    method: ClassVar[str] = "sae"  # for error messages

    def __init__(self, n_concepts: int, seed: int = 0, device: str = "cpu", name: str | None = None,
                 display_name: str | None = None, k: int = 5, max_epochs: int = 200,
                 batch_size: int = 256, lr: float = 4e-3, decay_fraction: float = 0.2,
                 aux_k: int | None = None, aux_coef: float = 1 / 32, dead_after_epochs: float = 1.0,
                 accelerator: str = "cpu", devices: Any = 1, precision: Any = "32-true") -> None:
        super().__init__(n_concepts, seed, device, name, display_name)
        m = self.method
        self.k = check_number(m, "k", k, minimum=1, integer=True)
        if self.k > self.n_concepts:
            raise CoxlmmError(
                f"{m}: k={k} active latents per sample exceeds n_concepts={n_concepts}; use k <= K."
            )
        self.max_epochs = check_number(m, "max_epochs", max_epochs, minimum=1, integer=True)
        self.batch_size = check_number(m, "batch_size", batch_size, minimum=1, integer=True)
        self.lr = float(check_number(m, "lr", lr, strict=True))
        self.decay_fraction = float(check_number(m, "decay_fraction", decay_fraction))
        if self.decay_fraction > 1:
            raise CoxlmmError(f"{m}: decay_fraction={decay_fraction} must be in [0, 1].")
        self.aux_k = None if aux_k is None else check_number(m, "aux_k", aux_k, minimum=1, integer=True)
        self.aux_coef = float(check_number(m, "aux_coef", aux_coef))
        self.dead_after_epochs = float(check_number(m, "dead_after_epochs", dead_after_epochs, strict=True))
        self.accelerator, self.devices, self.precision = str(accelerator), devices, precision
        for n in ("W_enc", "b_enc", "b_dec", "scale"):
            setattr(self, n, None)
        self.losses_: list[float] = []  # training FVU per step of the last fit

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "max_epochs": self.max_epochs, "batch_size": self.batch_size,
                "lr": self.lr, "decay_fraction": self.decay_fraction, "aux_k": self.aux_k,
                "aux_coef": self.aux_coef, "dead_after_epochs": self.dead_after_epochs,
                "accelerator": self.accelerator, "devices": self.devices, "precision": self.precision}

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

    def calibrate(self, a: torch.Tensor) -> None:
        """After training: set inference state from the training activations a (M, K)."""

    # --- Dictionary ----------------------------------------------------------------------------
    def _fit(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        Zc = Z.cpu()
        mean = Zc.mean(0)
        scale = float((Zc - mean).pow(2).sum(1).mean().sqrt()) or 1.0
        X = ((Zc - mean) / scale).contiguous()
        gen = torch.Generator().manual_seed(self.seed)
        steps = self.max_epochs * math.ceil(len(X) / self.batch_size)
        module = SAEModule(self, X, gen, steps)
        loader = DataLoader(_Batches(X, self.batch_size, gen), batch_size=None)
        quiet = logging.getLogger("lightning.pytorch")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # no "GPU available" banners and tips at every fit
        try:
            with warnings.catch_warnings():
                for message in (".*does not have many workers.*", ".*`IterableDataset` has `__len__`.*",
                                r".*isinstance\(treespec, LeafSpec\).*"):
                    warnings.filterwarnings("ignore", message=message)
                trainer = L.Trainer(accelerator=self.accelerator, devices=self.devices,
                                    precision=self.precision, max_epochs=self.max_epochs, logger=False,
                                    enable_checkpointing=False, enable_progress_bar=False,
                                    enable_model_summary=False, num_sanity_val_steps=0)
                trainer.fit(module, train_dataloaders=loader)
        finally:
            quiet.setLevel(level)
        self.losses_ = torch.stack(module.losses).float().cpu().tolist() if module.losses else []
        dev = Z.device
        self.U = module.W_dec.detach().to(dev, torch.float32)
        self.W_enc = module.W_enc.detach().to(dev, torch.float32)
        self.b_enc = module.b_enc.detach().to(dev, torch.float32)
        self.b_dec = (mean.to(dev) + scale * module.b_dec.detach().to(dev)).to(torch.float32)
        self.scale = torch.tensor([scale], dtype=torch.float32, device=dev)
        self.calibrate(self._pre(Z).relu())
        return self.U, self._encode(Z)

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

"""The binary autoencoder of Binary Sparsity Alignment.

    u = x @ W_e.T + b_e          # (B, N) pre-activations ("logits")
    s = sigmoid(u)               # (B, N) soft code in (0, 1)
    h = 1[u > 0]                 # (B, N) hard bits, the code that is stored
    b = rounding(s, h)           # (B, N) what the decoder sees while training
    x_hat = b @ W_d.T + b_d      # (B, D) reconstruction
    t = topk_mask(s, K)          # (B, N) 1 at the K largest entries of s, no gradient

Rounding while training (at evaluation the decoder always sees h):
- ste: b = s + (h - s).detach()  forward uses h, backward treats the round as identity
- none: b = s                    the round removed
- hard: b = h.detach()           no gradient reaches the encoder through the decoder
- stochastic: b ~ Bernoulli(s), with the pass-through gradient
With sparsity "hard-topk" the decoder sees exactly K bits: b = s + (t - s).detach(),
and the stored code of such a model is t, not h.

While training, the decoder product of a 0/1 code may be computed from its
active columns only (see `sparsebin.decoding`); `decoder_path` picks auto (by
measured cost, on a CPU), dense or sparse. Both give the same result within
float32 rounding.

Centring (off in the paper's setting): with a centre c (D,), fixed or learned,
    u = (x - c) @ W_e.T + b_e,   r = b @ W_d.T + b_d,   x_hat = c + L r / |r|
with L the training rows' mean distance |x - c| from the centre. The loss
compares the centred vectors by cosine, which leaves |r| free (measured on HPO:
|r| about 5.4 against L = 0.93); putting r back at length L makes x_hat a
point among the data again (HPO, rigid TopK with the rate balance, centred:
cosine recon 0.172 with r + c, 0.118 with c + L r / |r|). `sparsebin.remedies` sets c, and L under a cosine
reconstruction distance only: MSE and L1 fit |r| themselves, so there L = 0
and x_hat = r + c, as for a model saved before L was kept.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from sparsebin.decoding import DECODER_PATHS, active_positions, sparse_decode, sparse_pays
from sparsebin.losses import mask_from_indices, topk_indices


@dataclass
class Forward:
    logits: torch.Tensor  # u, (B, N)
    soft: torch.Tensor  # s, (B, N)
    hard: torch.Tensor  # h, (B, N) float 0/1
    topk: torch.Tensor  # (B, K) positions of t's ones
    code: torch.Tensor  # b, (B, N) what the decoder saw
    recon: torch.Tensor  # x_hat, (B, D)

    @property
    def mask(self) -> torch.Tensor:
        """t, (B, N) float 0/1, built on demand."""
        return mask_from_indices(self.topk, self.soft.shape[-1], self.soft)


class _PassThrough(torch.autograd.Function):
    """Forward: the rounded value; backward: the gradient goes to the soft input as is.

    The same as soft + (rounded - soft).detach(), without two (B, N) passes.
    """

    @staticmethod
    def forward(ctx, soft: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
        return rounded.clone() if rounded.requires_grad else rounded

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def pass_through(soft: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    return _PassThrough.apply(soft, rounded)


def binary_step(logits: torch.Tensor) -> torch.Tensor:
    """h = 1[u > 0] as float, written straight into a float tensor.

    One pass; `(u > 0).float()` makes a bool tensor and converts it, ~6x slower on a CPU.
    """
    return torch.gt(logits, 0, out=torch.empty_like(logits))


class BinaryAutoencoder(nn.Module):
    def __init__(
        self,
        d_in: int,
        n_bits: int,
        k: int,
        rounding: str = "ste",
        sparsity: str = "align",
        init: str = "default",
        centre: str = "none",
    ):
        super().__init__()
        self.d_in, self.n_bits, self.k = d_in, n_bits, k
        self.rounding, self.sparsity, self.centring = rounding, sparsity, centre
        self.encoder = nn.Linear(d_in, n_bits)
        self.decoder = nn.Linear(n_bits, d_in)
        self.decoder_path = "auto"  # auto, dense or sparse; not saved: every path gives the same model
        # Share of code entries on in the last training batch (the decoder path's cost rule reads it): the
        # start is dense, but rigid TopK is always K / N, so a resumed run picks the path an uninterrupted one does.
        self.active_share = k / n_bits if sparsity == "hard-topk" else 1.0
        if init == "sparse":
            # Few bits fire at the start; METHOD.md notes this leaves most bits dead.
            nn.init.constant_(self.encoder.bias, math.log(k / (n_bits - k)))
        # c, (D,): a buffer when fixed, a parameter when learned; absent (no state) without centring,
        # so the paper's model has exactly the paper's weights.
        if centre == "mean":
            self.register_buffer("centre", torch.zeros(d_in))
        elif centre.startswith("learned"):
            self.centre = nn.Parameter(torch.zeros(d_in))
        else:
            self.centre = None
        if self.centre is not None:
            self.register_buffer("centre_length", torch.zeros(()))  # L; 0: decode r + c (models saved before L)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's; a centred model saved before the length L was kept loads with L = 0."""
        if self.centre is not None and "centre_length" not in state_dict:
            state_dict = {**state_dict, "centre_length": torch.zeros((), device=self.centre.device)}
        return super().load_state_dict(state_dict, strict, assign)

    def uncentre(self, recon: torch.Tensor) -> torch.Tensor:
        """x_hat from the decoder product r (B, D): r itself, or c + L r / |r| when centring (r + c when L = 0)."""
        if self.centre is None:
            return recon
        length = self.centre_length
        scaled = recon * (length / recon.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return self.centre + torch.where(length > 0, scaled, recon)

    def _centred(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.centre is None else x - self.centre

    def encode_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._centred(x))

    def encoder_offset(self) -> torch.Tensor:
        """(N,) the bias u has for x = 0: b_e - W_e c (b_e without centring)."""
        if self.centre is None:
            return self.encoder.bias
        return self.encoder.bias - self.encoder.weight @ self.centre

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The stored code as float 0/1, (B, N): h = 1[u > 0], or t for rigid hard-topk.

        With sparsity "hard-topk" the decoder only ever sees the TopK mask, so the
        mask is that model's code (exactly K bits per concept).
        """
        logits = self.encode_logits(x)
        if self.sparsity == "hard-topk":
            return mask_from_indices(topk_indices(logits, self.k), self.n_bits, logits)
        return (logits > 0).to(x.dtype)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.uncentre(self.decoder(code))

    def forward(self, x: torch.Tensor, k: int | None = None) -> Forward:
        """One pass; `k` overrides the TopK target K while training (the K schedule)."""
        logits = self.encode_logits(x)
        soft = torch.sigmoid(logits)
        hard = binary_step(logits)
        topk = topk_indices(logits, k or self.k)  # sigmoid is monotone: same as the top of s
        code = self._training_code(soft, hard, topk) if self.training else self.stored_code(hard, topk)
        recon = self.reconstruct(code, topk)
        return Forward(logits, soft, hard, topk, code, self.uncentre(recon))

    def reconstruct(self, code: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
        """x_hat = b @ W_d.T + b_d, (B, D): the decoder product of a forward pass.

        While training with a 0/1 forward code (every rounding but `none`), from
        the active columns when `decoder_path` says so: auto asks the measured
        cost rule, on a CPU only (no GPU cost was measured), at the last batch's
        active share.
        """
        rigid = self.sparsity == "hard-topk"
        binary = self.training and (self.rounding != "none" or rigid)
        if rigid:
            self.active_share = topk.shape[1] / self.n_bits  # known exactly, also under a K schedule
        if not binary or not self._sparse_now(code):
            if binary and not rigid and self.decoder_path == "auto" and code.device.type == "cpu":
                self.active_share = float(code.detach().sum()) / code.numel()
            return self.decoder(code)
        rows, columns = active_positions(code, topk if rigid else None)
        if not rigid:
            self.active_share = len(columns) / code.numel()
        return sparse_decode(code, rows, columns, self.decoder.weight, self.decoder.bias)

    def _sparse_now(self, code: torch.Tensor) -> bool:
        if self.decoder_path not in DECODER_PATHS:
            raise ValueError(f"decoder_path must be one of {', '.join(DECODER_PATHS)}, got {self.decoder_path!r}.")
        if self.decoder_path != "auto":
            return self.decoder_path == "sparse"
        return code.device.type == "cpu" and sparse_pays(self.active_share, self.d_in, self.sparsity == "hard-topk")

    def stored_code(self, hard: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
        return mask_from_indices(topk, self.n_bits, hard) if self.sparsity == "hard-topk" else hard

    def _training_code(self, soft: torch.Tensor, hard: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
        if self.sparsity == "hard-topk":
            return pass_through(soft, mask_from_indices(topk, self.n_bits, soft))
        if self.rounding == "ste":
            return pass_through(soft, hard)
        if self.rounding == "none":
            return soft
        if self.rounding == "hard":
            return hard.detach()
        return pass_through(soft, torch.bernoulli(soft.detach()))

    def describe(self) -> dict:
        """The constructor arguments, so a saved model can be rebuilt without pickle."""
        return {
            "d_in": self.d_in,
            "n_bits": self.n_bits,
            "k": self.k,
            "rounding": self.rounding,
            "sparsity": self.sparsity,
            "centre": self.centring,
        }

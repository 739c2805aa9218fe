"""The binary autoencoder of Binary Sparsity Alignment.

    u = x @ W_e.T + b_e          # (B, N) pre-activations ("logits")
    s = sigmoid(u)               # (B, N) soft code in (0, 1)
    h = 1[u > 0]                 # (B, N) hard bits, the code that is stored
    b = rounding(s, h)           # (B, N) what the decoder sees while training
    x_hat = b @ W_d.T + b_d      # (B, D) reconstruction
    t = TopK(s, K)               # (B, N) 1 at the K largest entries of s, no gradient

Rounding while training (at evaluation the decoder always sees h):
- ste: b = s + (h - s).detach()  forward uses h, backward treats the round as identity
- none: b = s                    the round removed
- hard: b = h.detach()           no gradient reaches the encoder through the decoder
- stochastic: b ~ Bernoulli(s), with the pass-through gradient
With sparsity "hard-topk" the decoder sees exactly K bits: b = s + (t - s).detach(),
and the stored code of such a model is t, not h.

While training, the decoder product of a 0/1 code may be computed from its
active columns only (see `sparsebin.decoding`); the spec's `decoder_path` picks
auto (by measured cost, on a CPU), dense or sparse. Both give the same result
within float32 rounding.

A model is built from one frozen `ModelSpec`, the only constructor argument,
and the spec is saved beside the weights (`sparsebin.runfolder`), so a saved
model is rebuilt as the model it was.

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

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from sparsebin.decoding import DECODER_PATHS, DecoderChoice
from sparsebin.losses import mask_from_indices, topk_indices


@dataclass(frozen=True)
class ModelSpec:
    """Everything that makes a BinaryAutoencoder the model it is; saved beside its weights.

    Not the config's `init`: it only picks the starting weights (see
    `sparsebin.train.build_model`), which a saved model's own weights replace,
    so a spec naming it would say nothing about the model it rebuilds.
    """

    d_in: int  # D: input size
    n_bits: int  # N: code length
    k: int  # K: the TopK target
    rounding: str = "ste"  # ste, none, hard or stochastic: what the decoder sees while training
    sparsity: str = "align"  # align, hard-topk, l1 or none; hard-topk stores the TopK mask t instead of h
    centre: str = "none"  # none, mean, learned-mean or learned-median (see the module docstring)
    decoder_path: str = "auto"  # auto, dense or sparse: how a training forward computes the decoder product

    def __post_init__(self):
        if self.decoder_path not in DECODER_PATHS:
            raise ValueError(f"decoder_path must be one of {', '.join(DECODER_PATHS)}, got {self.decoder_path!r}.")

    @classmethod
    def from_config(cls, config, d_in: int, decoder_path: str = "auto") -> "ModelSpec":
        """The spec a TrainConfig trains, for inputs of size `d_in`."""
        return cls(d_in, config.n_bits, config.k, config.rounding, config.sparsity, config.centre, decoder_path)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        """A saved spec; one saved before ModelSpec existed (the constructor's arguments) has no decoder_path."""
        return cls(**json.loads(text))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @property
    def rigid(self) -> bool:
        """Rigid TopK: the decoder sees, and the model stores, exactly the K largest bits."""
        return self.sparsity == "hard-topk"

    @property
    def binary_while_training(self) -> bool:
        """The decoder sees a 0/1 code while training: every rounding but `none`, and rigid TopK."""
        return self.rounding != "none" or self.rigid


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
    """The model of the module docstring, built from its spec alone."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.encoder = nn.Linear(spec.d_in, spec.n_bits)
        self.decoder = nn.Linear(spec.n_bits, spec.d_in)
        self.decoding = DecoderChoice(spec.decoder_path, spec.d_in, spec.n_bits, spec.k, spec.rigid)
        # c, (D,): a buffer when fixed, a parameter when learned; absent (no state) without centring,
        # so the paper's model has exactly the paper's weights.
        if spec.centre == "mean":
            self.register_buffer("centre", torch.zeros(spec.d_in))
        elif spec.centre.startswith("learned"):
            self.centre = nn.Parameter(torch.zeros(spec.d_in))
        else:
            self.centre = None
        if self.centre is not None:
            self.register_buffer("centre_length", torch.zeros(()))  # L; 0: decode r + c (models saved before L)

    @property
    def d_in(self) -> int:
        return self.spec.d_in

    @property
    def n_bits(self) -> int:
        return self.spec.n_bits

    @property
    def k(self) -> int:
        return self.spec.k

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
        if self.spec.rigid:
            return mask_from_indices(topk_indices(logits, self.spec.k), self.spec.n_bits, logits)
        return (logits > 0).to(x.dtype)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.uncentre(self.decoder(code))

    def forward(self, x: torch.Tensor, k: int | None = None) -> Forward:
        """One pass; `k` overrides the TopK target K while training (the K schedule)."""
        logits = self.encode_logits(x)
        soft = torch.sigmoid(logits)
        hard = binary_step(logits)
        topk = topk_indices(logits, k or self.spec.k)  # sigmoid is monotone: same as the top of s
        code = self._training_code(soft, hard, topk) if self.training else self.stored_code(hard, topk)
        recon = self.reconstruct(code, topk)
        return Forward(logits, soft, hard, topk, code, self.uncentre(recon))

    def reconstruct(self, code: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
        """b @ W_d.T + b_d, (B, D): the decoder product of a forward pass.

        While training with a 0/1 code, the model's `DecoderChoice` picks the dense or the sparse product.
        """
        if self.training and self.spec.binary_while_training:
            return self.decoding.decode(code, topk, self.decoder)
        return self.decoder(code)

    def stored_code(self, hard: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
        return mask_from_indices(topk, self.spec.n_bits, hard) if self.spec.rigid else hard

    def _training_code(self, soft: torch.Tensor, hard: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
        if self.spec.rigid:
            return pass_through(soft, mask_from_indices(topk, self.spec.n_bits, soft))
        rounding = self.spec.rounding
        if rounding == "ste":
            return pass_through(soft, hard)
        if rounding == "none":
            return soft
        if rounding == "hard":
            return hard.detach()
        return pass_through(soft, torch.bernoulli(soft.detach()))

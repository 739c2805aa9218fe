"""What the training loop reports while it runs: one progress event per logging step.

The loop hands each `ProgressEvent` to its progress callback; a run's history
(history.jsonl, the queue's progress table, `TrainResult.history`) keeps each
event as its `to_record()`, a JSON-ready dict of the same names. Records
written before the names were whole words (rec_loss, sp_loss, samples_per_s,
elapsed_s, aux_loss, k_target) read back through `read_record` under today's.
Torch-free, so pages can read a history without loading torch.
"""

from collections.abc import Mapping
from dataclasses import asdict, dataclass

# Names a record used before they were whole words, and today's.
OLD_NAMES = {
    "rec_loss": "reconstruction_loss",
    "sp_loss": "alignment_loss",
    "samples_per_s": "samples_per_second",
    "elapsed_s": "elapsed_seconds",
    "aux_loss": "auxiliary_loss",
    "k_target": "target_active",
}
# The curves a history can show, as a user reads their names.
CURVES = {
    "loss": "loss",
    "reconstruction_loss": "reconstruction loss",
    "alignment_loss": "alignment loss",
    "active_mean": "active bits per concept",
    "dead_bits": "dead bits",
    "grad_norm": "encoder gradient norm",
    "code_churn": "code churn (share of probe bits changed in an epoch)",
}


@dataclass(frozen=True)
class ProgressEvent:
    step: int  # optimizer steps taken, resumed epochs included
    epoch: int  # the epoch this step belongs to, counted from 1
    total_steps: int  # steps of the whole run
    loss: float  # the logged batch's total loss, remedy terms included
    reconstruction_loss: float  # L_rec of the logged batch, in the training distance
    alignment_loss: float  # L_sp before alpha: d(s, t) under align, mean(s) under l1, 0 under hard-topk and none
    active_mean: float  # active bits of the stored code per row of the logged batch
    dead_bits: int  # stored-code bits that fired on no training row in the last whole epoch (first epoch: so far)
    samples_per_second: float  # training rows a second since this call of `train` began
    elapsed_seconds: float  # since this call of `train` began
    epoch_end: bool  # the last step of its epoch (a checkpoint follows)
    rate_loss: float | None = None  # the weighted firing-rate term; None without rate control
    auxiliary_loss: float | None = None  # the weighted AuxK term; None unless revive is auxk
    target_active: int | None = None  # the K schedule's TopK target at this step; None when it is K
    # Training stability (sparsebin.stability); None in histories written before each was logged.
    grad_norm: float | None = None  # the encoder gradient norm |(dL/dW_e, dL/db_e)| of the logged step
    nonfinite_steps: int | None = None  # steps so far whose loss or gradient was not finite (each was skipped)
    code_churn: float | None = None  # epoch ends: share of the probe's stored bits changed since the last epoch end

    def to_record(self) -> dict:
        """The event as history keeps it: a JSON-ready dict without the fields that are None (the remedies'
        terms when they are off, the churn between epoch ends)."""
        return {name: value for name, value in asdict(self).items() if value is not None}


def read_record(record: Mapping) -> dict:
    """A history record under today's names, however old: the names of OLD_NAMES renamed, the rest kept."""
    return {OLD_NAMES.get(name, name): value for name, value in record.items()}

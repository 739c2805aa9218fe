"""Devices on their own terms: names, the `auto` choice, free memory, clocks, random states.

The code is written and tested on CPUs; each function here is where CUDA (or
MPS) behaves differently from a CPU, so the training loop can stay plain:
- `cuda` and `cuda:0` are one card: `canonical_device` names it one way.
- `auto` only picks a GPU after a small kernel has run on it.
- kernels run asynchronously on a GPU: a clock read without `synchronize`
  times the launches, not the work.
- a CPU job never initialises CUDA (no `torch.cuda` call unless the device is CUDA).
"""

import ctypes
import ctypes.util
import functools
import hashlib
import logging
import platform
import sys
import warnings

import torch

log = logging.getLogger(__name__)


def device_kind(device: str) -> str:
    """cpu, cuda or mps."""
    return device.split(":")[0]


def canonical_device(device: str) -> str:
    """One name per device: `cuda` becomes `cuda:0` (torch's current card), others stay as given."""
    return "cuda:0" if device == "cuda" else device


def claimable_devices(worker_device: str) -> tuple[str, ...]:
    """The job device names a worker on `worker_device` serves: its own names and `auto`."""
    device = canonical_device(worker_device)
    names = ("cuda", device) if device == "cuda:0" else (device,)
    return (*names, "auto")


def is_available(device: str) -> bool:
    """Whether this machine has `device` (checked without initialising CUDA for a CPU name)."""
    kind = device_kind(device)
    if kind == "cpu":
        return True
    if kind == "mps":
        return torch.backends.mps.is_available()
    if kind == "cuda" and torch.cuda.is_available():
        index = canonical_device(device).partition(":")[2]
        return index.isdigit() and int(index) < torch.cuda.device_count()
    return False


def probe_kernel(device: str) -> None:
    """Run one small product on `device` and wait for it; raises when the card cannot run kernels."""
    a = torch.ones(8, 8, device=device)
    (a @ a).sum().item()


def resolve_device(device: str, probe=probe_kernel) -> str:
    """Turn `auto` into the best device present whose kernels run: CUDA, then MPS, then CPU.

    A GPU torch sees but cannot run on (a build without kernels for the card,
    a busy or broken driver) is skipped with a warning rather than failing the
    job later. Named devices are returned in canonical form.
    """
    if device != "auto":
        return canonical_device(device)
    return _probe_auto(probe)


@functools.cache
def _probe_auto(probe) -> str:
    candidates = []
    if torch.cuda.is_available():
        candidates.append("cuda:0")
    if torch.backends.mps.is_available():
        candidates.append("mps")
    for candidate in candidates:
        try:
            probe(candidate)
        except Exception as error:  # any failure means: do not train here
            message = f"device {candidate} is present but a test kernel failed on it ({error}); trying the next device."
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            log.warning(message)
            continue
        return candidate
    return "cpu"


def synchronize(device: str) -> None:
    """Wait for the device's queued kernels, so a clock read afterwards counts them."""
    kind = device_kind(device)
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def free_memory(device: str) -> int | None:
    """Bytes free for new tensors on `device`: the card's free memory, or the host's available RAM.

    None when the platform does not say (MPS shares host memory; this is then host RAM too).
    """
    if device_kind(device) == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    return available_ram()


def available_ram() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def describe_device(device: str) -> dict:
    """What produced a run's numbers: the device, its name, and the torch build."""
    kind = device_kind(device)
    if kind == "cuda":
        name = torch.cuda.get_device_name(torch.device(device))
    elif kind == "mps":
        name = "Apple GPU (mps)"
    else:
        name = platform.processor() or platform.machine() or "cpu"
    return {
        "device": canonical_device(device),
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if kind == "cuda" else None,
        "threads": torch.get_num_threads() if kind == "cpu" else None,
        "host": platform.node(),
    }


def get_rng_state(device: str) -> torch.Tensor:
    """The state of the generator that draws on `device` (stochastic rounding), as a CPU byte tensor."""
    kind = device_kind(device)
    if kind == "cuda":
        return torch.cuda.get_rng_state(torch.device(device))
    if kind == "mps":
        return torch.mps.get_rng_state()
    return torch.get_rng_state()


def set_rng_state(device: str, state: torch.Tensor, saved_on: str) -> None:
    """Restore a state saved by `get_rng_state(saved_on)` into `device`'s generator.

    The same kind of device takes the state as is, so a resume draws what the
    uninterrupted run would have. Generators of different kinds keep different
    states (CUDA's Philox counter, the CPU's Mersenne Twister), so across kinds
    the resume's generator is seeded from a digest of the saved state: the
    draws differ from the uninterrupted run's (they would on another device in
    any case) but every resume of that checkpoint on that device draws alike.
    """
    kind = device_kind(device)
    if device_kind(saved_on) != kind:
        seed = int.from_bytes(hashlib.sha256(state.numpy().tobytes()).digest()[:8], "little") >> 1
        if kind == "cuda":
            with torch.cuda.device(torch.device(device)):
                torch.cuda.manual_seed(seed)
        elif kind == "mps":
            torch.mps.manual_seed(seed)
        else:
            torch.manual_seed(seed)
        return
    if kind == "cuda":
        torch.cuda.set_rng_state(state, torch.device(device))
    elif kind == "mps":
        torch.mps.set_rng_state(state)
    else:
        torch.set_rng_state(state)


@functools.cache
def reuse_freed_blocks() -> bool:
    """Let glibc keep freed large blocks for reuse instead of unmapping them (CPU training).

    A training step allocates about ten (B, N) float tensors; glibc maps each
    block over 32 MiB afresh and unmaps it when freed, so every step pays the
    page faults of touching new memory again (measured: a 64 MiB comparison
    into fresh memory ~4x slower than into reused memory, ~10 % of a step at
    B = N = 4096 on 2 cores). Raising the mmap and trim thresholds keeps the
    blocks in the heap: the process holds its peak instead of returning it
    between steps. Once per process; False where libc is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 2**30) and mallopt(m_trim_threshold, 2**31 - 1))

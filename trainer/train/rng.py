"""Seeds and per-student random streams.

A student trained in a cohort must equal the same student trained alone (docs/design.md). Its random
numbers are therefore its own: its initialisation is seeded from (seed, its name), and its dropout
draws come from an `RngStream` that is swapped in around its forward and out again afterwards, so
other students' forwards never shift its masks. Streams are saved in checkpoints for exact resume.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch


def derive_seed(seed: int, *names: str) -> int:
    """A 63-bit seed from the run seed and names ("student", "TinyBioBERT", ...)."""
    text = "/".join([str(seed), *names]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def _device_index(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def global_state(device: torch.device, cuda: int | None = None) -> dict[str, torch.Tensor]:
    """The global generators' states: the CPU's, and the device's on CUDA (`cuda`: its index,
    when the caller has it at hand)."""
    cuda = _device_index(device) if cuda is None else cuda
    state = {"cpu": torch.get_rng_state()}
    if cuda is not None:
        state["cuda"] = torch.cuda.get_rng_state(cuda)
    return state


def set_global_state(
    state: dict[str, torch.Tensor], device: torch.device, cuda: int | None = None
) -> None:
    """Restore what `global_state` returned."""
    cuda = _device_index(device) if cuda is None else cuda
    torch.set_rng_state(state["cpu"])
    if cuda is not None and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], cuda)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with the global generators (CPU and `device`) seeded, then restore them."""
    cuda = _device_index(device)
    with torch.random.fork_rng(devices=[cuda] if cuda is not None else []):
        torch.manual_seed(seed)
        yield


class RngStream:
    """A private random stream for the CPU generator and the device's generator."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        self._cuda = _device_index(device)
        with seeded(seed, device):
            self._state = self._read()

    def _read(self) -> dict[str, torch.Tensor]:
        return global_state(self.device, self._cuda)

    def _write(self, state: dict[str, torch.Tensor]) -> None:
        set_global_state(state, self.device, self._cuda)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Draw from this stream inside the block; the global streams are untouched by it."""
        outside = self._read()
        self._write(self._state)
        try:
            yield
        finally:
            self._state = self._read()
            self._write(outside)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self._state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self._state) - set(state)
        if missing:
            raise ValueError(f"random stream state lacks {sorted(missing)}")
        self._state = {k: state[k].clone() for k in self._state}

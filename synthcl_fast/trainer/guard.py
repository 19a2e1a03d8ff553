"""Non-finite losses caught on the device: a training step never waits for the host to read a loss.

Each step hands its losses to `NonFiniteGuard.check`, which compares them on the device. The first non-finite
one is recorded there (its step, its name, its value) and a flag is raised that every optimizer reads on the
device (fused Adam's `found_inf`, as torch.amp.GradScaler uses it): from that step on, no optimizer step and no
moving-average update changes a weight. The host reads the record only where it reads anything anyway
(`first_nonfinite`: between steps, before a checkpoint), and then stops training naming the step.
"""

from __future__ import annotations

import torch


class NonFiniteGuard:
    def __init__(self, device: torch.device):
        self.device = device
        self.names: list[str] = []                  # every loss name seen, in order: the record holds an index
        self._name_index: dict[tuple[str, ...], torch.Tensor] = {}
        # 1.0 once a non-finite loss was seen: the optimizers' found_inf, and the EMA's "do not move" factor
        self.tripped = torch.zeros((), device=device)
        self._step_and_name = torch.full((2,), -1, dtype=torch.int64, device=device)
        self._value = torch.zeros((), device=device)

    def attach(self, *optimizers: torch.optim.Optimizer) -> None:
        """Make the optimizers skip their step (parameters and state unchanged) once the guard has tripped.
        They must be fused (torch.optim.Adam(fused=True)): only the fused kernels read found_inf on the device."""
        for optimizer in optimizers:
            if not all(group.get("fused") for group in optimizer.param_groups):
                raise ValueError("NonFiniteGuard needs fused optimizers (fused=True)")
            optimizer.found_inf = self.tripped

    def check(self, step: int, names: tuple[str, ...], values: torch.Tensor) -> None:
        """Record the losses `values` (len(names),) of training step `step` (1-based); trip on the first non-finite
        one."""
        if names not in self._name_index:  # once per set of names: the only host-to-device copy here
            self.names.extend(n for n in names if n not in self.names)
            self._name_index[names] = torch.tensor([self.names.index(n) for n in names], device=self.device)
        values = values.detach().float()
        bad = ~torch.isfinite(values)
        first = bad.any() & (self.tripped == 0)
        # the first non-finite loss of this step (0 where none is), picked by index_select: indexing with a 0-d
        # tensor would read it on the host
        k = bad.to(torch.uint8).argmax().reshape(1)
        record = torch.cat([torch.full_like(k, step), self._name_index[names].index_select(0, k)])
        self._step_and_name.copy_(torch.where(first, record, self._step_and_name))
        self._value.copy_(torch.where(first, values.index_select(0, k)[0], self._value))
        self.tripped.copy_(torch.maximum(self.tripped, bad.any().float()))

    def first_nonfinite(self) -> tuple[int, str, float] | None:
        """(step, loss name, value) of the first non-finite loss, or None. Reads the device: call between steps."""
        step, name = self._step_and_name.tolist()
        return None if step < 0 else (step, self.names[name], float(self._value))

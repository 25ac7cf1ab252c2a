"""Adagrad with learning-rate decay and L2 weight decay (PyTorch's update)."""

from __future__ import annotations

from dlx.optim.optimizer import Optimizer


class Adagrad(Optimizer):
    """``torch.optim.Adagrad``'s formula (t counts this parameter's steps from 1)::

        g = grad + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        s += g**2                      (s starts at initial_accumulator_value)
        p -= clr * g / (sqrt(s) + eps)

    State per parameter: ``step``, ``sum``; created at construction, as in PyTorch.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
    ):
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._state(p, group)

    def _validate(self, group):
        super()._validate(group)
        if not 0.0 <= group["lr_decay"]:
            raise ValueError(f"Invalid lr_decay value: {group['lr_decay']}")
        if not 0.0 <= group["weight_decay"]:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
        if not 0.0 <= group["initial_accumulator_value"]:
            raise ValueError(
                f"Invalid initial_accumulator_value value: {group['initial_accumulator_value']}"
            )
        if not 0.0 <= group["eps"]:
            raise ValueError(f"Invalid epsilon value: {group['eps']}")

    def _init_state(self, p, group):
        init = float(group["initial_accumulator_value"])
        return {"step": 0, "sum": p.device.xp.full_like(p.data, init)}

    def _required_state(self, group):
        return ("step", "sum")

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for gi, group in enumerate(self.param_groups):
            live = [p for p in group["params"] if p.grad is not None]
            if not live:
                continue
            steps = self._steps(gi, group, live)
            lr_decay = float(group["lr_decay"])
            weight_decay = float(group["weight_decay"])
            eps = float(group["eps"])
            xp = live[0].device.xp
            # torch's clr for every parameter of the group at once, in float64
            clr = self._lr(gi, group, live[0].device) / (1 + (steps - 1) * lr_decay)
            rounded: dict = {}  # dtype -> clr rounded to it once
            for i, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                state = self.state[p]
                if weight_decay != 0:
                    g = g + weight_decay * p.data
                clr_p = rounded.get(p.data.dtype)
                if clr_p is None:
                    clr_p = rounded[p.data.dtype] = xp.astype(clr, p.data.dtype)
                s = state["sum"]
                s += g * g
                std = xp.sqrt(s)
                std += eps
                t = g / std
                t *= clr_p[i]
                p.data -= t
        return loss

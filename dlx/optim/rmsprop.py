"""RMSprop, plain or centered, with optional momentum and L2 weight decay (PyTorch's update)."""

from __future__ import annotations

from dlx.optim.optimizer import Optimizer


class RMSprop(Optimizer):
    """``torch.optim.RMSprop``'s formula::

        g = grad + weight_decay * p
        v = alpha * v + (1 - alpha) * g**2
        avg = sqrt(v - gbar**2) + eps,  gbar = lerp(gbar, g, 1 - alpha)   (centered)
        avg = sqrt(v) + eps                                               (otherwise)
        buf = momentum * buf + g / avg;  p -= lr * buf                    (momentum > 0)
        p -= lr * g / avg                                                 (otherwise)

    State per parameter: ``step``, ``square_avg``, ``momentum_buffer`` (momentum > 0),
    ``grad_avg`` (centered).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
    ):
        defaults = dict(
            lr=lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=centered,
        )
        super().__init__(params, defaults)

    def _validate(self, group):
        super()._validate(group)
        if not 0.0 <= group["eps"]:
            raise ValueError(f"Invalid epsilon value: {group['eps']}")
        if not 0.0 <= group["momentum"]:
            raise ValueError(f"Invalid momentum value: {group['momentum']}")
        if not 0.0 <= group["weight_decay"]:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
        if not 0.0 <= group["alpha"]:
            raise ValueError(f"Invalid alpha value: {group['alpha']}")

    def _init_state(self, p, group):
        xp = p.device.xp
        state = {"step": 0, "square_avg": xp.zeros_like(p.data)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = xp.zeros_like(p.data)
        if group["centered"]:
            state["grad_avg"] = xp.zeros_like(p.data)
        return state

    def _required_state(self, group):
        keys = ("step", "square_avg")
        if group["momentum"] > 0:
            keys += ("momentum_buffer",)
        if group["centered"]:
            keys += ("grad_avg",)
        return keys

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for gi, group in enumerate(self.param_groups):
            live = [p for p in group["params"] if p.grad is not None]
            if not live:
                continue
            self._steps(gi, group, live)  # counted on the device, as torch keeps the count
            lr = self._lr(gi, group, live[0].device)
            rounded: dict = {}  # dtype -> lr rounded to it once
            alpha = float(group["alpha"])
            eps = float(group["eps"])
            weight_decay = float(group["weight_decay"])
            momentum = float(group["momentum"])
            centered = bool(group["centered"])
            for p in live:
                g = p.grad
                state = self.state[p]
                xp = p.device.xp
                lr_p = rounded.get(p.data.dtype)
                if lr_p is None:
                    lr_p = rounded[p.data.dtype] = xp.astype(lr, p.data.dtype)
                if weight_decay != 0:
                    g = g + weight_decay * p.data
                square_avg = state["square_avg"]
                square_avg *= alpha
                t = g * g
                t *= 1 - alpha
                square_avg += t
                if centered:
                    grad_avg = state["grad_avg"]
                    t = g - grad_avg  # lerp towards g, as torch's lerp_ does for weight < 0.5
                    t *= 1 - alpha
                    grad_avg += t
                    avg = xp.sqrt(square_avg - grad_avg * grad_avg)
                else:
                    avg = xp.sqrt(square_avg)
                avg += eps
                if momentum > 0:
                    buf = state["momentum_buffer"]
                    buf *= momentum
                    buf += g / avg
                    p.data -= lr_p * buf
                else:
                    t = g / avg
                    t *= lr_p
                    p.data -= t
        return loss

"""SGD with momentum, dampening, Nesterov momentum and L2 weight decay (PyTorch's update)."""

from __future__ import annotations

from dlx.optim.optimizer import Optimizer


class SGD(Optimizer):
    """Stochastic gradient descent, ``torch.optim.SGD``'s formula::

        g = grad + weight_decay * p
        buf = g (first step) | momentum * buf + (1 - dampening) * g
        g = g + momentum * buf (nesterov) | buf
        p -= lr * g

    State per parameter: ``momentum_buffer`` (only when momentum != 0; no step count).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )
        super().__init__(params, defaults)

    def _validate(self, group):
        super()._validate(group)
        if group["momentum"] < 0.0:
            raise ValueError(f"Invalid momentum value: {group['momentum']}")
        if group["weight_decay"] < 0.0:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _init_state(self, p, group):
        return {}

    def _required_state(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for gi, group in enumerate(self.param_groups):
            live = [p for p in group["params"] if p.grad is not None]
            if not live:
                continue
            # float(): a numpy.float64 hyper-parameter would promote float32 arrays to float64
            lr = self._lr(gi, group, live[0].device)  # float64, on the device
            rounded: dict = {}  # dtype -> lr rounded to it once
            momentum = float(group["momentum"])
            dampening = float(group["dampening"])
            weight_decay = float(group["weight_decay"])
            nesterov = bool(group["nesterov"])
            for p in live:
                g = p.grad
                if weight_decay != 0:
                    g = g + weight_decay * p.data
                if momentum != 0:
                    state = self._state(p, group)
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        # own copy: p.grad may alias an array the layer keeps
                        buf = g if g is not p.grad else p.device.xp.asarray(g, copy=True)
                        state["momentum_buffer"] = buf
                    else:
                        buf *= momentum
                        buf += g if dampening == 0 else (1 - dampening) * g
                    g = g + momentum * buf if nesterov else buf
                lr_p = rounded.get(p.data.dtype)
                if lr_p is None:
                    lr_p = rounded[p.data.dtype] = p.device.xp.astype(lr, p.data.dtype)
                p.data -= lr_p * g
        return loss

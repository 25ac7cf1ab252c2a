"""Adam (with optional AMSGrad) and AdamW (decoupled weight decay), PyTorch's updates."""

from __future__ import annotations

from dlx.optim.optimizer import Optimizer


class Adam(Optimizer):
    """``torch.optim.Adam``'s formula (t counts this parameter's steps from 1)::

        p *= 1 - lr * weight_decay               (decoupled_weight_decay, i.e. AdamW)
        g = grad + weight_decay * p              (otherwise)
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g**2
        vmax = max(vmax, v)                      (amsgrad; then v means vmax below)
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        decoupled_weight_decay: bool = False,
    ):
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults)

    def _validate(self, group):
        super()._validate(group)
        if not 0.0 <= group["eps"]:
            raise ValueError(f"Invalid epsilon value: {group['eps']}")
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas!r}; expected a pair (beta1, beta2)")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= group["weight_decay"]:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")

    def _init_state(self, p, group):
        xp = p.device.xp
        state = {"step": 0, "exp_avg": xp.zeros_like(p.data), "exp_avg_sq": xp.zeros_like(p.data)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        return state

    def _required_state(self, group):
        keys = ("step", "exp_avg", "exp_avg_sq")
        return keys + ("max_exp_avg_sq",) if group["amsgrad"] else keys

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for gi, group in enumerate(self.param_groups):
            live = [p for p in group["params"] if p.grad is not None]
            if not live:
                continue
            beta1, beta2 = float(group["betas"][0]), float(group["betas"][1])
            eps = float(group["eps"])
            weight_decay = float(group["weight_decay"])
            amsgrad = bool(group["amsgrad"])
            decoupled = bool(group["decoupled_weight_decay"])
            steps = self._steps(gi, group, live)  # float64, on the device
            lr = self._lr(gi, group, live[0].device)
            fused = live[0].device.backend.adam_step  # the whole group in one kernel (CUDA)
            if fused is not None and not amsgrad:
                fused([p.data for p in live], [p.grad for p in live],
                      [self.state[p]["exp_avg"] for p in live],
                      [self.state[p]["exp_avg_sq"] for p in live], steps,
                      [self._entry(gi, p) for p in live], lr, beta1=beta1, beta2=beta2, eps=eps,
                      weight_decay=weight_decay, decoupled=decoupled)
                continue
            xp = live[0].device.xp
            # the step's scalars for the whole group at once, in float64 as torch computes
            # them on the host, then rounded once to the parameters' dtype
            # (entries of parameters without a gradient this step may be 0: counted as 1 here,
            # their results unused, so no division by zero)
            t = xp.maximum(steps, 1.0) if len(live) < len(group["params"]) else steps
            step_size = lr / (1 - beta1**t)
            bias_correction2_sqrt = xp.pow(1 - beta2**t, 0.5)
            decay = 1 - lr * weight_decay
            scalars: dict = {}  # dtype -> the three, rounded
            for i, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                dt = p.data.dtype
                if dt not in scalars:
                    scalars[dt] = (xp.astype(step_size, dt), xp.astype(bias_correction2_sqrt, dt),
                                   xp.astype(decay, dt))
                ss, bc2, dec = scalars[dt]
                state = self.state[p]
                if weight_decay != 0:
                    if decoupled:
                        p.data *= dec
                    else:
                        g = g + weight_decay * p.data
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                t = g - exp_avg  # lerp towards g, as torch's lerp_ does for weight < 0.5
                t *= 1 - beta1
                exp_avg += t
                exp_avg_sq *= beta2
                t = g * g
                t *= 1 - beta2
                exp_avg_sq += t
                if amsgrad:  # in place: a captured step keeps the state's addresses
                    state["max_exp_avg_sq"][...] = xp.maximum(state["max_exp_avg_sq"], exp_avg_sq)
                    exp_avg_sq = state["max_exp_avg_sq"]
                denom = xp.sqrt(exp_avg_sq)
                denom /= bc2[i]
                denom += eps
                t = exp_avg / denom
                t *= ss[i]
                p.data -= t
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``): ``p *= 1 - lr * weight_decay``
    before the Adam step, so the decay never enters the moment estimates. Default 1e-2."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay=True)

    def _validate(self, group):
        super()._validate(group)
        if "decoupled_weight_decay" in group and not group["decoupled_weight_decay"]:
            raise ValueError("AdamW always decouples weight decay (decoupled_weight_decay=True)")

"""Optimizer: what every optimizer shares (parameter groups, per-parameter state,
``zero_grad``, ``state_dict``/``load_state_dict``), shaped like ``torch.optim.Optimizer``.

State arrays live on their parameter's device and follow ``Module.to(...)``: a Parameter
calls ``_move_state`` on each optimizer that registered itself in ``p._optimizers``.

A step never reads the device from the host, and what changes between steps lives in device
memory rather than in launch arguments: each group's learning rate is a float64 0-d array on
its parameters' device (written when ``group["lr"]`` changed, by ``step()``, by a scheduler or
by ``push_hyperparameters()``), and the step counts of a group are one float64 vector there
(``state[p]["step"]`` is a 0-d view of its entry). So a step captured into a CUDA graph follows
its scheduler, and the per-step scalars (bias corrections, decayed rates) are computed for a
whole group at once on the device.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

from dlx._device import device_of, is_array, to_numpy
from dlx.nn.module import Parameter

_LIVE: weakref.WeakSet = weakref.WeakSet()  # every optimizer, for push_hyperparameters()


def push_hyperparameters() -> None:
    """Write every optimizer's changed learning rates to the device (host-to-device only).
    A captured step (``dlx.compile_step``) calls it before each replay, so a rate set by
    hand between steps is what the next replay reads."""
    for opt in list(_LIVE):
        opt._push_lr()


class _Required:
    """Marks a hyper-parameter with no default (every group must give it)."""

    def __repr__(self):
        return "<required parameter>"


required = _Required()


def _to_python(v):
    """Host and device scalars, 0-d arrays and array lists as plain Python values.

    Checkpoints read back from disk hold ``numpy.float64`` scalars and arrays where the
    optimizer wrote Python floats and tuples; a float64 scalar would turn float32
    parameter updates into float64, so every hyper-parameter goes through here.
    """
    if v is None or type(v) in (bool, int, float, str):  # exact: numpy.float64 is a float
        return v
    if isinstance(v, Mapping):
        return {k: _to_python(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_to_python(x) for x in v)
    if hasattr(v, "shape"):  # an array or array scalar of any library
        return to_numpy(v).tolist()
    return v


class Optimizer:
    """Base class: holds ``param_groups`` (list of dicts with ``'params'`` and the
    hyper-parameters), ``defaults`` and ``state`` (Parameter -> dict of arrays and ``'step'``).

    Subclasses set ``defaults``, implement ``step()`` and may override ``_validate(group)``
    (raise ValueError for bad hyper-parameters), ``_init_state(p, group)`` and
    ``_required_state(group)`` (the state keys a loaded checkpoint must hold).
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self._validate(self.defaults)
        self.state: dict = {}
        self.param_groups: list[dict] = []
        self._lr_slots: dict = {}  # (group index, device) -> [value written, 0-d float64 array]
        self._step_vectors: dict = {}  # group index -> (device, float64 vector, {id(p): i})
        _LIVE.add(self)
        if isinstance(params, Parameter):
            raise TypeError(
                f"{type(self).__name__}: params must be an iterable of Parameters or of dicts, "
                "got a single Parameter; pass [param] or module.parameters()"
            )
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], Mapping):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    # ---- parameter groups ----------------------------------------------------------------
    def add_param_group(self, param_group) -> None:
        """Add a group: a dict with ``'params'`` and optional per-group hyper-parameters."""
        if not isinstance(param_group, Mapping):
            raise TypeError(
                f"{type(self).__name__}: a param group must be a dict, "
                f"got {type(param_group).__name__}"
            )
        if "params" not in param_group:
            raise ValueError(f"{type(self).__name__}: a param group needs a 'params' entry")
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(
                f"{type(self).__name__}: params are an ordered collection; sets change order "
                "between runs (use a list)"
            )
        params = list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{type(self).__name__} can only optimize Parameters, got {type(p).__name__}"
                )
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{type(self).__name__}: a param group contains a parameter twice")
        group["params"] = params
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(
                    f"{type(self).__name__}: parameter group didn't specify a value of "
                    f"required optimization parameter {name}"
                )
            group.setdefault(name, default)
        self._validate(group)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)
        for p in params:
            p._optimizers.add(self)

    def _validate(self, group: Mapping) -> None:
        """Raise ValueError naming a bad hyper-parameter (PyTorch's messages)."""
        lr = group.get("lr", 0.0)
        if lr is not required and not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")

    # ---- per-step helpers ------------------------------------------------------------------
    def step(self, closure=None):
        raise NotImplementedError(f"{type(self).__name__} does not implement step")

    def _init_state(self, p: Parameter, group: dict) -> dict:
        """Fresh state for ``p`` (zeros on its device); the default holds only the step count."""
        return {"step": 0}

    def _state(self, p: Parameter, group: dict) -> dict:
        state = self.state.get(p)
        if state is None:
            state = self.state[p] = self._init_state(p, group)
            if "step" in state:  # a counting optimizer: its entry of the group's vector
                dev, vec, pos = self._step_vector(self._group_index(group), group)
                state["step"] = _view(dev.xp, vec, pos[id(p)])
        return state

    # ---- device-resident learning rates and step counts ---------------------------------------
    def _group_index(self, group: dict) -> int:
        for gi, g in enumerate(self.param_groups):
            if g is group:
                return gi
        raise ValueError(f"{type(self).__name__}: this group is not one of param_groups")

    @staticmethod
    def _group_device(group: dict):
        devices = {p.device for p in group["params"]}
        if len(devices) != 1:
            names = ", ".join(sorted(str(d) for d in devices))
            raise ValueError(
                f"a parameter group's parameters live on {names}: an optimizer step reads one "
                "learning rate and one step-count vector per group on one device; move the "
                "model with .to(device) or give each device its own group"
            )
        return next(iter(devices))

    def _lr(self, gi: int, group: dict, dev):
        """The group's learning rate as a float64 0-d array on ``dev``, rewritten in place (a
        captured graph keeps reading the same address) when ``group["lr"]`` changed."""
        lr = float(group["lr"])
        slot = self._lr_slots.get((gi, dev))
        if slot is None:
            slot = self._lr_slots[(gi, dev)] = [lr, dev.asarray(lr, dtype="float64", copy=True)]
        elif slot[0] != lr:
            slot[1][...] = lr
            slot[0] = lr
        return slot[1]

    def _push_lr(self) -> None:
        for gi, dev in list(self._lr_slots):
            if gi < len(self.param_groups):
                self._lr(gi, self.param_groups[gi], dev)

    def _steps(self, gi: int, group: dict, live: list):
        """Count one step for each parameter in ``live`` (those with a gradient) and return the
        group's step vector on its device (entry ``self._entry(gi, p)`` belongs to ``p``)."""
        _, vec, pos = self._step_vector(gi, group)
        for p in live:
            self._state(p, group)  # fresh state takes its view of vec
        if len(live) == len(group["params"]):
            vec += 1
        else:
            for p in live:
                i = pos[id(p)]
                v = vec[i : i + 1]
                v += 1
        return vec

    def _entry(self, gi: int, p: Parameter) -> int:
        """The entry of ``p`` in its group's step vector."""
        return self._step_vectors[gi][2][id(p)]

    def _step_vector(self, gi: int, group: dict):
        """(device, vector, {id(p): i}) of the group, packed anew when its parameters moved."""
        dev = self._group_device(group)
        packed = self._step_vectors.get(gi)
        if packed is None or packed[0] != dev or len(packed[2]) != len(group["params"]):
            packed = self._step_vectors[gi] = self._pack_steps(group, dev)
        return packed

    def _pack_steps(self, group: dict, dev):
        """A new step vector for ``group`` on ``dev`` from its parameters' current counts (0
        for parameters without state), and their state's views into it."""
        xp = dev.xp
        params = group["params"]
        vec = xp.zeros((len(params),), dtype=xp.float64, device=dev.array_device)
        pos = {id(p): i for i, p in enumerate(params)}
        for i, p in enumerate(params):
            state = self.state.get(p)
            if state is None or "step" not in state:
                continue
            old = state["step"]
            vec[i : i + 1] = xp.reshape(dev.asarray(old, dtype="float64"), (1,))
            state["step"] = _view(xp, vec, i)
        return dev, vec, pos

    def _required_state(self, group: Mapping) -> tuple[str, ...]:
        return ("step",)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every gradient (``set_to_none=True``) or fill it with zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad = device_of(p.grad).xp.zeros_like(p.grad)

    def _move_state(self, param: Parameter, dev, dtype=None) -> None:
        """Called by ``Parameter._move``: put this parameter's state on ``dev`` (and ``dtype``)."""
        state = self.state.get(param)
        if not state:
            return
        for k, v in state.items():
            if k == "step":  # float64 whatever the parameters' dtype; repacked by the next step
                state[k] = dev.asarray(v, dtype="float64", copy=True)
                self._step_vectors.clear()  # (even if the group comes back before that step)
            elif is_array(v):
                state[k] = dev.asarray(v, dtype=dtype)

    # ---- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}`` as in
        PyTorch: parameters are numbered in group order. Arrays are references (as in
        PyTorch), not copies: write them out or copy them to keep a snapshot."""
        index: dict = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                index[id(p)] = len(index)
                packed["params"].append(index[id(p)])
            groups.append(packed)
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict) -> None:
        """Restore hyper-parameters and state from ``state_dict()`` output.

        Arrays may be NumPy arrays or live on any device: they are copied onto each
        parameter's device and cast to its dtype. Raises ValueError naming the problem
        (group count or size, unknown index, missing key, shape) and changes nothing then.
        """
        name = type(self).__name__
        if (
            not isinstance(state_dict, Mapping)
            or "state" not in state_dict
            or "param_groups" not in state_dict
        ):
            raise ValueError(
                f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups' "
                f"(the output of Optimizer.state_dict()), got {type(state_dict).__name__}"
            )
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}.load_state_dict: loaded state dict has {len(saved_groups)} parameter "
                f"groups, the optimizer has {len(self.param_groups)}"
            )
        by_index: dict = {}
        new_groups = []
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if not isinstance(saved, Mapping) or "params" not in saved:
                raise ValueError(f"{name}.load_state_dict: param_groups[{i}] has no 'params'")
            ids = _to_python(saved["params"])
            if not isinstance(ids, (list, tuple)):
                ids = [ids]
            if len(ids) != len(group["params"]):
                raise ValueError(
                    f"{name}.load_state_dict: param_groups[{i}] has {len(ids)} parameters in the "
                    f"state dict but {len(group['params'])} in the optimizer"
                )
            for idx, p in zip(ids, group["params"]):
                if int(idx) in by_index:
                    raise ValueError(
                        f"{name}.load_state_dict: parameter index {idx} appears twice "
                        "in param_groups"
                    )
                by_index[int(idx)] = (p, i)
            new = {k: v for k, v in group.items() if k != "params"}
            for k, v in saved.items():
                if k == "params":
                    continue
                v = _to_python(v)
                if isinstance(group.get(k), tuple) and isinstance(v, list):
                    v = tuple(v)
                new[k] = v
            try:
                self._validate(new)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{name}.load_state_dict: param_groups[{i}]: {e}") from None
            new["params"] = group["params"]
            new_groups.append(new)

        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise ValueError(f"{name}.load_state_dict: 'state' must be a dict index -> dict")
        new_state = {}
        for key, st in saved_state.items():
            try:
                idx = int(key)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{name}.load_state_dict: state key {key!r} is not a parameter index"
                ) from None
            if idx not in by_index:
                raise ValueError(
                    f"{name}.load_state_dict: state for parameter index {idx}, but the param "
                    f"groups number parameters 0..{len(by_index) - 1}"
                )
            p, gi = by_index[idx]
            if not isinstance(st, Mapping):
                raise ValueError(f"{name}.load_state_dict: state[{idx}] must be a dict")
            new_state[p] = self._load_param_state(p, st, idx, new_groups[gi])
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)
        self.state = new_state
        self._step_vectors.clear()
        for gi, group in enumerate(self.param_groups):
            if any("step" in self.state.get(p, ()) for p in group["params"]):
                self._step_vector(gi, group)

    def _load_param_state(self, p: Parameter, st: Mapping, idx: int, group: dict) -> dict:
        name = type(self).__name__
        dev = p.device
        xp = dev.xp
        out = {}
        for k, v in st.items():
            if v is None:
                continue
            if k == "step":
                step = _to_python(v)
                if isinstance(step, bool) or not isinstance(step, (int, float)) or step < 0:
                    raise ValueError(
                        f"{name}.load_state_dict: state[{idx}]['step'] must be a count, got {v!r}"
                    )
                out[k] = int(step)
            elif hasattr(v, "shape") or isinstance(v, (list, tuple)):
                arr = dev.asarray(v, dtype=p.dtype)
                if tuple(arr.shape) != p.shape:
                    raise ValueError(
                        f"{name}.load_state_dict: state[{idx}][{k!r}] has shape "
                        f"{tuple(arr.shape)}, the parameter has {p.shape}"
                    )
                # copy: the optimizer updates state in place, the caller's arrays stay theirs
                out[k] = xp.asarray(arr, copy=True)
            else:
                out[k] = _to_python(v)
        missing = [k for k in self._required_state(group) if k not in out]
        if missing:
            raise ValueError(
                f"{name}.load_state_dict: state[{idx}] lacks {', '.join(map(repr, missing))}"
            )
        return out

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(group):
                if k != "params":
                    lines.append(f"    {k}: {group[k]}")
        lines.append(")")
        return "\n".join(lines)


def _view(xp, vec, i: int):
    """Entry ``i`` of ``vec`` as a 0-d array sharing its memory (every namespace dlx runs on
    gives a view for a slice and a reshape of it)."""
    return xp.reshape(vec[i : i + 1], ())

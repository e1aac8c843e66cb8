"""A model's state, checked and restored by value: what keeps an attack from changing the
model for the cells after it (:func:`robench.attack.attack_mode`).

:class:`ModelSnapshot` records, for every module, its class, mode, submodules, parameter and
buffer objects, hooks and any instance-level ``forward``, plus each parameter's
``requires_grad``, ``.grad`` and gradient hooks and torch's global module hooks, and copies
every parameter and buffer (on its own device). :meth:`ModelSnapshot.check_and_restore` names
the first change and puts everything back: the same objects, the values copied into their
original storage, added hooks, attributes and modules removed. Values are compared bit for bit
(NaN weights are no change).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

_MISSING = object()
#: the integer dtype of each element size: tensors are compared bit for bit (NaN == NaN)
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` viewed as integers of its element size, so that equality is bitwise."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    try:
        return t.view(_BITS[t.element_size()])
    except (KeyError, RuntimeError):  # an exotic dtype or layout: compare values
        return t


def _hook_label(attr: str) -> str:
    """``_forward_pre_hooks`` → ``forward pre-hook``; ``_global_forward_hooks`` → the same."""
    name = attr.strip("_").removeprefix("global_")
    name = name.replace("_with_kwargs", "").replace("_always_called", "").removesuffix("s")
    return (
        name.replace("_pre_hook", " pre-hook").replace("_post_hook", " post-hook").replace("_", " ")
    )


def _dict_change(old: dict, new: dict) -> tuple[str, Any] | None:
    """How ``new`` differs from ``old`` (keys, and values by identity): ``("added", key)``,
    ``("removed", key)`` or ``("replaced", key)`` for the first such key; None if it does not."""
    if not old and not new:  # most hook dicts: the fast path
        return None
    if len(old) == len(new) and all(
        k1 == k2 and v1 is v2 for (k1, v1), (k2, v2) in zip(old.items(), new.items(), strict=True)
    ):
        return None
    added = [k for k in new if k not in old]
    if added:
        return "added", added[0]
    removed = [k for k in old if k not in new]
    if removed:
        return "removed", removed[0]
    replaced = [k for k in old if new[k] is not old[k]]
    return "replaced", (replaced or list(old))[0]  # or only reordered


def _restore_dict(owner: Any, attr: str, obj: dict, items: dict) -> None:
    """Put ``obj`` back as ``owner.attr`` holding exactly ``items`` (in order), in place: hook
    handles and other references to the dict keep working."""
    if vars(owner).get(attr) is not obj:
        setattr(owner, attr, obj)
    if _dict_change(items, obj) is not None:
        obj.clear()
        obj.update(items)


def _where(module_name: str) -> str:
    return f"{module_name!r}" if module_name else "the model"


def _qualified(module_name: str, name: str) -> str:
    return f"{module_name}.{name}" if module_name else name


class _ModuleState:
    """What one module is made of: its class, mode, children, parameter and buffer objects,
    hooks and instance-level ``forward``."""

    __slots__ = ("cls", "dicts", "fwd", "hooks", "module", "name", "non_persistent", "training")

    def __init__(self, name: str, module: nn.Module) -> None:
        own = vars(module)
        self.name, self.module, self.cls = name, module, type(module)
        self.training = module.training
        #: ``_modules``, ``_parameters``, ``_buffers``: (the dict object, a copy of its items)
        self.dicts = {a: (own[a], dict(own[a])) for a in ("_modules", "_parameters", "_buffers")}
        self.non_persistent = set(module._non_persistent_buffers_set)
        #: every ``*hook*`` attribute: dicts as (object, items), flags as their value
        self.hooks = {
            a: (v, dict(v)) if isinstance(v, dict) else (v, None)
            for a, v in own.items()
            if "hook" in a
        }
        self.fwd = own.get("forward", _MISSING)

    def changes(self, who: str) -> tuple[list[str], list[str], bool]:
        """(changes to the tree of modules, other structural changes) as messages, and whether
        anything besides the mode differs (hook flags included, which have no message)."""
        m, own, name = self.module, vars(self.module), self.name
        tree: list[str] = []
        other: list[str] = []
        dirty = m._non_persistent_buffers_set != self.non_persistent
        if type(m) is not self.cls:
            tree.append(f"{who} changed the class of {_where(name)} (restored)")
        kinds = {"_modules": "submodule", "_parameters": "parameter", "_buffers": "buffer"}
        for attr, (_, items) in self.dicts.items():
            now = own.get(attr)
            now = now if isinstance(now, dict) else {}
            diff = _dict_change(items, now)
            found = tree if attr == "_modules" else other
            if diff is not None:
                change, key = diff
                undo = "removed" if change == "added" else "restored"
                found.append(f"{who} {change} {kinds[attr]} {_qualified(name, key)!r} ({undo})")
            shadowed = [k for k in items if k in own]
            if shadowed:
                other.append(
                    f"{who} hid {kinds[attr]} {_qualified(name, shadowed[0])!r} behind an "
                    "instance attribute (removed)"
                )
        if own.get("forward", _MISSING) is not self.fwd:
            other.append(f"{who} replaced the forward method of {_where(name)} (restored)")
        for attr, (obj, items) in self.hooks.items():
            if items is None:
                dirty = dirty or own.get(attr, _MISSING) is not obj
                continue
            now = own.get(attr)
            diff = _dict_change(items, now if isinstance(now, dict) else {})
            if diff is not None:
                label, where = _hook_label(attr), _where(name)
                other.append(
                    f"{who} registered a {label} on {where} (removed)"
                    if diff[0] == "added"
                    else f"{who} {diff[0]} a {label} on {where} (restored)"
                )
        return tree, other, dirty or bool(tree or other)

    def restore(self) -> None:
        """Put back everything :meth:`changes` compares (the mode is set by the caller)."""
        m, own = self.module, vars(self.module)
        if type(m) is not self.cls:
            object.__setattr__(m, "__class__", self.cls)
        for attr, (obj, items) in self.dicts.items():
            _restore_dict(m, attr, obj, items)
            for key in items:  # an instance attribute would shadow the restored entry
                own.pop(key, None)
        if m._non_persistent_buffers_set != self.non_persistent:
            m._non_persistent_buffers_set.clear()
            m._non_persistent_buffers_set.update(self.non_persistent)
        if own.get("forward", _MISSING) is not self.fwd:
            if self.fwd is _MISSING:
                del own["forward"]
            else:
                own["forward"] = self.fwd
        for attr, (obj, items) in self.hooks.items():
            if items is None:
                own[attr] = obj
            else:
                _restore_dict(m, attr, obj, items)


class _TensorState:
    """One parameter or buffer: the object, a copy of its values and where its data lives."""

    __slots__ = (
        "copy",
        "data",
        "grad",
        "hooks",
        "kind",
        "layout",
        "name",
        "owner",
        "requires_grad",
        "tensor",
    )

    def __init__(self, name: str, kind: str, tensor: torch.Tensor, owner: nn.Module) -> None:
        self.name, self.kind, self.tensor, self.owner = name, kind, tensor, owner
        lazy = isinstance(tensor, nn.parameter.UninitializedTensorMixin)
        self.copy = None if lazy or tensor.is_meta else tensor.detach().clone()
        #: the tensor's own data (no copy: the same storage), put back if ``.data`` is replaced
        self.data = tensor.data
        self.layout = self._layout()
        self.requires_grad = tensor.requires_grad
        self.grad = tensor.grad if kind == "parameter" else None
        #: gradient hooks on the tensor itself: (object or None, items)
        self.hooks = {
            a: (h, dict(h) if isinstance(h, dict) else None)
            for a in ("_backward_hooks", "_post_accumulate_grad_hooks")
            for h in [getattr(tensor, a, None)]
        }

    def _layout(self) -> tuple:
        t = self.tensor
        if self.copy is None:
            return (t.dtype, t.device, t.shape)
        return (t.dtype, t.device, t.shape, t.stride(), t.storage_offset(), t.data_ptr())

    def metadata_change(self, who: str) -> str | None:
        t, c = self.tensor, self.copy
        if c is None:
            return None
        for what, before, after in (("dtype", c.dtype, t.dtype), ("device", c.device, t.device)):
            if before != after:
                return (
                    f"{who} changed the {what} of the model's {self.kind} {self.name!r} "
                    f"({before} → {after}) (restored)"
                )
        return None

    def value_change(self, who: str) -> str:
        hint = ""
        if self.kind == "buffer" and isinstance(self.owner, nn.modules.batchnorm._NormBase):
            hint = " (did it run the model in train mode?)"
        return f"{who} changed the model's {self.kind} {self.name!r}{hint} (restored)"

    def grad_changes(self, who: str) -> list[str]:
        t, found = self.tensor, []
        if self.kind != "parameter":
            return found
        # a gradient set to None is the ``zero_grad()`` idiom, harmless: only put back
        if t.grad is not self.grad and t.grad is not None:
            found.append(f"{who} changed the gradient of parameter {self.name!r} (restored)")
        for attr, (_, items) in self.hooks.items():
            now = getattr(t, attr, None)
            if _dict_change(items or {}, now if isinstance(now, dict) else {}) is not None:
                found.append(
                    f"{who} registered a gradient hook on parameter {self.name!r} (removed)"
                )
        return found

    def restore_values(self, changed: bool) -> None:
        t, c = self.tensor, self.copy
        if c is None:
            return
        if self._layout() != self.layout:  # new data behind the object (.data =, .half())
            t.data = self.data
            changed = True
        if changed:
            with torch.no_grad():
                t.copy_(c)

    def restore_rest(self) -> None:
        t = self.tensor
        if self.kind == "parameter":
            if t.grad is not self.grad:
                t.grad = self.grad
            for attr, (obj, items) in self.hooks.items():
                now = getattr(t, attr, None)
                if isinstance(now, dict) and _dict_change(items or {}, now) is not None:
                    now.clear()
                    now.update(items or {})
                if now is not obj and obj is not None:
                    setattr(t, attr, obj)
            if t.requires_grad != self.requires_grad:
                t.requires_grad_(self.requires_grad)


def _unchanged(states: list[_TensorState]) -> list[bool]:
    """Whether each tensor still holds its copy's bits, with one synchronisation per device."""
    same: list[bool] = [True] * len(states)
    pending: dict[torch.device, list[tuple[int, torch.Tensor]]] = {}
    for i, s in enumerate(states):
        t, c = s.tensor, s.copy
        if c is None:
            continue
        if (t.dtype, t.device, t.shape) != (c.dtype, c.device, c.shape):
            same[i] = False
        elif t.device.type == "cpu":
            same[i] = torch.equal(_bits(t), _bits(c))
        else:
            pending.setdefault(t.device, []).append((i, (_bits(t) != _bits(c)).any()))
    for items in pending.values():
        differs = torch.stack([flag for _, flag in items]).tolist()
        for (i, _), d in zip(items, differs, strict=True):
            same[i] = not d
    return same


class ModelSnapshot:
    """The model's structure and a copy of its parameters and buffers, to check and restore."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = [_ModuleState(n, m) for n, m in model.named_modules()]
        self.tensors: list[_TensorState] = []
        seen: set[int] = set()
        for ms in self.modules:
            for kind, attr in (("parameter", "_parameters"), ("buffer", "_buffers")):
                for key, t in ms.dicts[attr][1].items():
                    if t is not None and id(t) not in seen:
                        seen.add(id(t))
                        name = _qualified(ms.name, key)
                        self.tensors.append(_TensorState(name, kind, t, ms.module))
        self.params = [s.tensor for s in self.tensors if s.kind == "parameter"]
        self.global_hooks = {
            a: (v, dict(v) if isinstance(v, dict) else None)
            for a, v in vars(_module_globals).items()
            if a.startswith("_global_") and "hook" in a
        }

    def check_and_restore(self, who: str) -> str | None:
        """The first change the block made to the model, as a message, or None; the model is
        restored either way (modes and ``requires_grad`` included)."""
        tree: list[str] = []
        other: list[str] = []
        dirty = []
        for ms in self.modules:
            t, o, d = ms.changes(who)
            tree += t
            other += o
            if d:
                dirty.append(ms)
        for attr, (_, items) in self.global_hooks.items():
            now = vars(_module_globals).get(attr)
            if items is not None and _dict_change(items, now or {}) is not None:
                other.append(f"{who} registered a global module {_hook_label(attr)} (removed)")
        metadata = [r for s in self.tensors if (r := s.metadata_change(who))]
        same = _unchanged(self.tensors)
        values = [s.value_change(who) for s, ok in zip(self.tensors, same, strict=True) if not ok]
        grads = [r for s in self.tensors for r in s.grad_changes(who)]
        left_train = [f"{who} switched the model to train mode (restored)"] * any(
            ms.module.training for ms in self.modules
        )
        # what a restore makes sense of first: the tree, dtypes and devices, replaced objects
        # and hooks, values, gradients; a swapped-in module in train mode is not a mode change
        reasons = tree + metadata + other + values + grads + left_train

        for ms in dirty:
            ms.restore()
        for ms in self.modules:
            ms.module.training = ms.training
        for s, ok in zip(self.tensors, same, strict=True):
            s.restore_values(changed=not ok)
            s.restore_rest()
        for attr, (obj, items) in self.global_hooks.items():
            if items is None:
                setattr(_module_globals, attr, obj)
            else:
                _restore_dict(_module_globals, attr, obj, items)
        return reasons[0] if reasons else None

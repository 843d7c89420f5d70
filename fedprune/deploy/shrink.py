"""Channel shrinking: the physically smaller network that computes what a masked model computes.

A unit (output channel of a conv, row of a linear layer) drops out of the computation in two
ways. *Constant*: none of its weights touches a varying input, so it outputs a fixed map
(its bias, plus what constant inputs feed it; through ReLU and pooling that stays fixed). It
is not dropped but folded: the next layer gets its contribution as extra bias (a bias map
where zero padding makes the contribution vary at the borders). *Unused*: every weight that
reads it in the next kept units is zero; it is simply not computed. Inputs of the first layer
that no kept unit reads are dropped with one index_select. The output layer keeps all rows.

The plan is a pure function of the masked weights, so the exporter (which calibrates kernels
on the shrunk weights) and the runtime (which runs them) derive the same one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fedprune.validation import ConfigError

FLATTEN_FIRST = {"mlp": True, "cnn1d": False, "cnn2d": False}  # where each reference model flattens
_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d}


@dataclass
class Step:
    """One operation of the shrunk network; ``kind`` says which fields matter."""

    kind: str  # select | flatten | relu | pool | linear | conv | constant
    name: str = ""
    weight: Tensor | None = None
    bias: Tensor | None = None
    bias_map: Tensor | None = None  # conv only: a per-position offset where padding breaks uniformity
    index: Tensor | None = None  # select only
    module: nn.Module | None = None  # pool only; conv: the original (for stride, padding...)
    units: tuple[int, int] = (0, 0)  # (kept, total) output units
    inputs: tuple[int, int] = (0, 0)  # (kept, total) inputs (channels or features)
    info: dict = field(default_factory=dict)


def operations(model: nn.Module) -> list[tuple[str, nn.Module | None]]:
    """(parameter prefix, module) of a reference model in execution order; ("", None) is the flatten."""
    spec = getattr(model, "spec", None)
    name = spec.get("name") if isinstance(spec, Mapping) else None
    if name not in FLATTEN_FIRST or not isinstance(getattr(model, "features", None), nn.Sequential) \
            or not isinstance(getattr(model, "head", None), nn.Linear):
        raise ConfigError(f"export runs the reference models ({', '.join(FLATTEN_FIRST)}) built by "
                          f"fedprune.training.models.build_model; got {type(model).__name__}. Build the model with "
                          "build_model and load your weights into it")
    features = [(f"features.{i}", m) for i, m in enumerate(model.features)]
    flatten = [("", None)]
    ops = flatten + features if FLATTEN_FIRST[name] else features + flatten
    ops.append(("head", model.head))
    for prefix, module in ops:
        if module is not None and not isinstance(module, (nn.Linear, nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, *_CONV)):
            raise ConfigError(f"layer {prefix} ({type(module).__name__}) is not supported by the runtime")
        if isinstance(module, tuple(_CONV)) and (module.groups != 1 or module.padding_mode != "zeros"):
            raise ConfigError(f"layer {prefix}: the runtime supports convolutions with groups=1 and zero padding")
    return ops


@torch.no_grad()
def plan(model: nn.Module, state: Mapping[str, Tensor]) -> list[Step]:
    """The shrunk network of ``model`` with the masked weights in ``state`` (zeros where pruned)."""
    ops = operations(model)
    weighted = [i for i, (_, m) in enumerate(ops) if isinstance(m, (nn.Linear, *_CONV))]
    fixed = torch.zeros((1, *model.spec["input_shape"]))  # constant parts of each activation; 0 where varying
    alive = torch.ones(fixed.shape[1], dtype=torch.bool)
    seen: dict[int, dict] = {}
    blocks = {}  # op index of a flatten -> (channels, positions per channel)
    for i, (prefix, module) in enumerate(ops):  # forward: which units vary, what the constant ones output
        if module is None:
            blocks[i] = (fixed.shape[1], fixed[0, 0].numel())
            alive = alive.repeat_interleave(blocks[i][1])
            fixed = fixed.flatten(1)
        elif i in weighted:
            weight, bias = _weight(state, prefix, module)
            nonzero = (weight != 0).reshape(weight.shape[0], weight.shape[1], -1).any(2)
            offset = _apply(module, fixed, weight, None)
            pre = offset + bias.reshape(1, -1, *[1] * (offset.dim() - 2))
            unit_alive = (nonzero & alive).any(1)
            seen[i] = {"weight": weight, "bias": bias, "nonzero": nonzero, "offset": offset[0], "in_alive": alive}
            fixed = pre * (~unit_alive).reshape(1, -1, *[1] * (pre.dim() - 2))
            alive = unit_alive
        else:
            fixed = module(fixed)
    needed = None  # backward: which units a kept unit downstream reads
    kept: dict[int, Tensor] = {}
    for i in reversed(range(weighted[0], len(ops))):
        if i in weighted:
            layer = seen[i]
            if i == weighted[-1]:  # the output layer keeps every row: the logits
                units = torch.ones(layer["weight"].shape[0], dtype=torch.bool)
            else:
                units = needed & (layer["nonzero"] & layer["in_alive"]).any(1)
            kept[i] = units
            needed = (layer["nonzero"][units] & layer["in_alive"]).any(0)
        elif i in blocks:
            needed = needed.reshape(blocks[i]).any(1)
    return _steps(ops, weighted, seen, kept, blocks, needed)


def _steps(ops, weighted, seen, kept, blocks, needed) -> list[Step]:
    """Steps from the forward and backward passes; ``needed``: the first layer's inputs that matter."""
    head = seen[weighted[-1]]
    if not bool(needed.any()):  # nothing varying reaches the output: the logits are constant
        offset = head["offset"]
        return [Step("constant", name=ops[weighted[-1]][0], bias=(head["bias"] + offset).contiguous(),
                     units=(offset.numel(), offset.numel()), inputs=(0, head["weight"].shape[1]))]
    steps: list[Step] = []
    inputs = needed  # over the features of the current activation
    for i, (prefix, module) in enumerate(ops):
        if i == weighted[0] and not bool(needed.all()):
            steps.append(Step("select", index=torch.nonzero(needed).flatten(),
                              inputs=(int(needed.sum()), needed.numel())))
        if module is None:
            if i > weighted[0]:
                inputs = inputs.repeat_interleave(blocks[i][1])
            steps.append(Step("flatten"))
        elif i not in weighted:
            steps.append(Step("relu") if isinstance(module, nn.ReLU) else Step("pool", module=module))
        else:
            layer, units = seen[i], kept[i]
            offset = layer["offset"][units]
            base = _uniform(offset)
            residue = offset - base.reshape(-1, *[1] * (offset.dim() - 1))
            kind = "linear" if isinstance(module, nn.Linear) else "conv"
            steps.append(Step(kind, name=prefix, weight=layer["weight"][units][:, inputs].contiguous(),
                              bias=(layer["bias"][units] + base).contiguous(),
                              bias_map=residue.contiguous() if kind == "conv" and bool(residue.any()) else None,
                              module=module if kind == "conv" else None,
                              units=(int(units.sum()), units.numel()), inputs=(int(inputs.sum()), inputs.numel())))
            inputs = units
    return steps


def _weight(state: Mapping[str, Tensor], prefix: str, module: nn.Module) -> tuple[Tensor, Tensor]:
    weight = state[f"{prefix}.weight"].detach().float()
    bias = state.get(f"{prefix}.bias") if module.bias is not None else None
    bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().float()
    return weight, bias


def _apply(module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return _CONV[type(module)](x, weight, bias, module.stride, module.padding, module.dilation)


def _uniform(offset: Tensor) -> Tensor:
    """Per unit, the value a conv offset takes away from the borders (a linear offset as it is)."""
    if offset.dim() == 1:
        return offset
    flat = offset.reshape(offset.shape[0], -1)
    return flat[:, flat.shape[1] // 2] if flat.shape[1] else flat.new_zeros(offset.shape[0])

"""Which parts of a model can be compressed.

A *compressible module* is one weight matrix a plan can act on: every Linear (Llama style)
or Conv1D (GPT-2 style) inside a transformer block, plus the token embedding and the LM
head. When the head is tied to the embedding they are one module (one stored matrix).

Weights are always handled as (out_features, in_features), the nn.Linear layout; GPT-2's
Conv1D stores the transpose, which `weight_matrix` / `set_weight_matrix` hide.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import ModelLoadError

# Block containers of the architectures transformers ships, tried in order.
_BLOCK_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers", "transformer.blocks")


@dataclass(frozen=True)
class ModuleRef:
    """One compressible weight matrix."""

    name: str  # dotted module path in the model, e.g. 'model.layers.3.self_attn.q_proj'
    block: int | None  # transformer block index; None for embedding / head
    component: str  # path inside the block ('self_attn.q_proj', 'mlp.c_fc') or 'embed' / 'head'
    part: str  # 'attn', 'mlp', 'embed' or 'head'
    out_features: int
    in_features: int
    transposed: bool  # True for GPT-2 Conv1D (weight stored as (in, out))
    has_bias: bool
    tied: bool = False  # embedding whose matrix is also the LM head

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features

    @property
    def is_linear(self) -> bool:
        """Acts as x @ W.T in the forward pass (blocks and the LM head)."""
        return self.part != "embed" or self.tied

    @property
    def short(self) -> str:
        """Compact label for tables and plots: '3.q_proj', 'embed', 'head'."""
        if self.block is None:
            return self.component
        return f"{self.block}.{self.component.split('.')[-1]}"


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks and its dotted path."""
    for path in _BLOCK_PATHS:
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return path, obj
    raise ModelLoadError(
        f"{type(model).__name__} is not a supported architecture: toggle compresses decoder-only models "
        f"whose transformer blocks sit at {', '.join(_BLOCK_PATHS)} (Llama- and GPT-2-style models)"
    )


def _is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D, matched by name to avoid importing internals
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _part_of(component: str) -> str:
    head = component.split(".")[0]
    return "attn" if "attn" in head or "attention" in head else "mlp"


def compressible_modules(model: nn.Module) -> list[ModuleRef]:
    """Every compressible weight matrix, in forward order: embedding, blocks, head."""
    names = {id(m): n for n, m in model.named_modules()}
    refs: list[ModuleRef] = []

    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    refs.append(
        ModuleRef(
            name=names[id(embed)], block=None, component="embed", part="embed",
            out_features=embed.weight.shape[0], in_features=embed.weight.shape[1],
            transposed=False, has_bias=False, tied=tied,
        )
    )

    prefix, blocks = find_blocks(model)
    for index, block in enumerate(blocks):
        for rel, module in block.named_modules():
            if isinstance(module, nn.Linear):
                out_f, in_f, transposed = module.out_features, module.in_features, False
            elif _is_conv1d(module):
                in_f, out_f = module.weight.shape
                transposed = True
            else:
                continue
            refs.append(
                ModuleRef(
                    name=f"{prefix}.{index}.{rel}", block=index, component=rel, part=_part_of(rel),
                    out_features=out_f, in_features=in_f, transposed=transposed,
                    has_bias=getattr(module, "bias", None) is not None,
                )
            )

    if head is not None and not tied:
        refs.append(
            ModuleRef(
                name=names[id(head)], block=None, component="head", part="head",
                out_features=head.weight.shape[0], in_features=head.weight.shape[1],
                transposed=False, has_bias=getattr(head, "bias", None) is not None,
            )
        )
    return refs


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def weight_matrix(module: nn.Module, ref: ModuleRef) -> torch.Tensor:
    """The weight as (out_features, in_features), without copying."""
    w = module.weight
    return w.t() if ref.transposed else w


def set_weight_matrix(module: nn.Module, ref: ModuleRef, w: torch.Tensor) -> None:
    """Replace the weight data in place from an (out_features, in_features) tensor."""
    target = module.weight
    src = w.t() if ref.transposed else w
    with torch.no_grad():
        target.copy_(src.to(dtype=target.dtype, device=target.device))


def stored_other_tensors(model: nn.Module, refs: list[ModuleRef]) -> dict[str, torch.Tensor]:
    """Every state tensor that is not a compressible weight (norms, biases, position
    embeddings), each stored once: what an artifact keeps as it is."""
    compressible = {f"{r.name}.weight" for r in refs}
    compressible_ptrs = {model.get_submodule(r.name).weight.data_ptr() for r in refs}
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        ptr = tensor.data_ptr()
        if name in compressible or ptr in compressible_ptrs or ptr in seen:
            continue
        seen.add(ptr)
        out[name] = tensor
    return out


def uncompressed_matrices(model: nn.Module, refs: list[ModuleRef]) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, shape, parameters) of every stored tensor of two or more dimensions that is not a
    compressible weight, largest first: position embeddings, and tensors no plan can reach such as
    the 3-D expert weights of fused mixture-of-experts blocks. Kept as loaded in every artifact."""
    rows = [(name, tuple(t.shape), t.numel()) for name, t in stored_other_tensors(model, refs).items() if t.dim() >= 2]
    return sorted(rows, key=lambda r: -r[2])


def uncompressed_note(model: nn.Module, refs: list[ModuleRef], *, threshold: float = 0.05) -> dict | None:
    """What `uncompressed_matrices` holds when it is at least `threshold` of the model's
    parameters (a plan cannot shrink it, so a user must hear of it), else None: the share, the
    tensors (largest first) and the sentence that says so."""
    rows = uncompressed_matrices(model, refs)
    total = parameter_counts(model)["total"]
    params = sum(r[2] for r in rows)
    if not rows or params < threshold * total:
        return None
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    named = ", ".join(f"{n} ({'x'.join(map(str, shape))})" for n, shape, _ in rows[:2])
    more = f" and {len(rows) - 2} more" if len(rows) > 2 else ""
    kinds = ("3-D tensors such as fused mixture-of-experts weights, " if any(len(r[1]) > 2 for r in rows) else "")
    text = (f"{100 * params / total:.1f}% of the model's parameters are in tensors toggle does not compress, kept "
            f"as loaded ({dtype}) in every plan: {named}{more}. toggle compresses 2-D weight matrices (Linear and "
            f"Conv1D layers in the blocks, the token embedding, the LM head); {kinds}position embeddings and "
            f"other parameters stay as they are")
    return {"parameters": params, "fraction": params / total, "dtype": dtype,
            "tensors": [{"name": n, "shape": list(shape), "parameters": k} for n, shape, k in rows], "note": text}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Unique parameters (tied weights once): total, compressible, and the rest."""
    refs = compressible_modules(model)
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # model.parameters() already yields tied tensors once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    compressible = sum(r.numel for r in refs)
    return {"total": total, "compressible": compressible, "other": total - compressible}


def describe(model: nn.Module) -> list[dict]:
    """Rows for `toggle modules`: one per compressible module."""
    return [
        {
            "name": r.name, "block": r.block, "component": r.component, "part": r.part,
            "shape": [r.out_features, r.in_features], "params": r.numel,
            "layout": "Conv1D" if r.transposed else ("Embedding" if r.part == "embed" else "Linear"),
            "tied": r.tied,
        }
        for r in compressible_modules(model)
    ]

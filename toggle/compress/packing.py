"""How a compressed matrix is laid out in bytes: bit packing, sparse encodings, their sizes.

The cost model and the artifact writer both go through `matrix_bytes` / `choose_encoding`,
so the bytes a plan is charged are the bytes `toggle apply` writes (tests compare the two).

A pruned matrix keeps the same number of weights in every row (pruning is per row), and is
stored in the cheapest of three encodings:
  dense    every value (pruned ones as the value that decodes to exactly 0); only possible
           when 0 is exactly representable (16-bit floats, symmetric integer codes),
  bitmask  one bit per position (1 = kept) plus the kept values in row-major order,
  indices  the column index of every kept value, (rows, kept) uint8/uint16/int32, plus the values.
"""
from __future__ import annotations

import math

import numpy as np
import torch

ENCODINGS = ("dense", "bitmask", "indices")


def index_bytes(in_features: int) -> int:
    """Bytes per stored column index: the smallest unsigned type that holds in_features - 1."""
    if in_features <= 256:
        return 1
    if in_features <= 65536:
        return 2
    return 4


def index_dtype(in_features: int) -> torch.dtype:
    return {1: torch.uint8, 2: torch.uint16, 4: torch.int32}[index_bytes(in_features)]


def value_bytes(count: int, bits: int) -> int:
    """Bytes of `count` values at `bits` each: 16 means float16, below 16 a packed bit stream."""
    if bits == 16:
        return 2 * count
    return math.ceil(count * bits / 8)


def encoding_bytes(encoding: str, out_f: int, in_f: int, keep: int, bits: int) -> int:
    """Bytes of the values plus the sparsity structure (not the scales) for one encoding."""
    total, kept = out_f * in_f, out_f * keep
    if encoding == "dense":
        return value_bytes(total, bits)
    if encoding == "bitmask":
        return math.ceil(total / 8) + value_bytes(kept, bits)
    if encoding == "indices":
        return index_bytes(in_f) * kept + value_bytes(kept, bits)
    raise ValueError(encoding)


def choose_encoding(out_f: int, in_f: int, keep: int, bits: int, zero_exact: bool) -> str:
    """The cheapest valid encoding; ties go to the simpler one (dense, bitmask, indices)."""
    if keep >= in_f:
        return "dense"
    candidates = ENCODINGS if zero_exact else ENCODINGS[1:]
    return min(candidates, key=lambda e: encoding_bytes(e, out_f, in_f, keep, bits))


def quant_param_bytes(out_f: int, in_f: int, group_size: int, symmetric: bool, input_scales: bool,
                      scale_bits: int = 16) -> int:
    """Scales (and minimums when asymmetric) per group, float16 per-input scales (AWQ).
    scale_bits 16: one float16 per group and parameter; below, each parameter is a packed
    stream of scale_bits-bit codes plus a float16 step and base per row (quant.ParamCodes)."""
    groups = 1 if group_size == -1 else math.ceil(in_f / group_size)
    n_params = 1 if symmetric else 2
    if scale_bits == 16:
        per_param = 2 * out_f * groups
    else:
        per_param = value_bytes(out_f * groups, scale_bits) + 4 * out_f
    return n_params * per_param + (2 * in_f if input_scales else 0)


def matrix_bytes(out_f: int, in_f: int, keep: int, bits: int, *, group_size: int = 128,
                 symmetric: bool = False, input_scales: bool = False, scale_bits: int = 16) -> tuple[int, str]:
    """Exact stored bytes of one matrix and the encoding chosen for it."""
    zero_exact = bits == 16 or symmetric
    encoding = choose_encoding(out_f, in_f, keep, bits, zero_exact)
    size = encoding_bytes(encoding, out_f, in_f, keep, bits)
    if bits < 16:
        size += quant_param_bytes(out_f, in_f, group_size, symmetric, input_scales, scale_bits)
    return size, encoding


# --- bit packing -------------------------------------------------------------------------

def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned integer codes (< 2**bits) into a little-endian bit stream of uint8."""
    flat = codes.reshape(-1).to(torch.uint8).cpu().numpy()
    if bits == 8:
        return torch.from_numpy(flat.copy())
    per_value = np.unpackbits(flat[:, None], axis=1, bitorder="little")[:, :bits]
    return torch.from_numpy(np.packbits(per_value.reshape(-1), bitorder="little"))


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of pack_bits: `count` uint8 codes."""
    data = packed.reshape(-1).cpu().numpy()
    if bits == 8:
        return torch.from_numpy(data[:count].copy())
    stream = np.unpackbits(data, count=count * bits, bitorder="little").reshape(count, bits)
    padded = np.zeros((count, 8), dtype=np.uint8)
    padded[:, :bits] = stream
    return torch.from_numpy(np.packbits(padded, axis=1, bitorder="little").reshape(count))


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask as one bit per position, little-endian, row-major."""
    return torch.from_numpy(np.packbits(mask.reshape(-1).cpu().numpy().astype(np.uint8), bitorder="little"))


def unpack_mask(packed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    count = shape[0] * shape[1]
    bits = np.unpackbits(packed.reshape(-1).cpu().numpy(), count=count, bitorder="little")
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


def mask_to_indices(mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Column indices of the kept positions, ascending per row: (rows, keep)."""
    cols = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    idx = cols[mask].reshape(mask.shape[0], keep)
    return idx.to(index_dtype(mask.shape[1]))


def indices_to_mask(indices: torch.Tensor, in_f: int) -> torch.Tensor:
    mask = torch.zeros(indices.shape[0], in_f, dtype=torch.bool)
    mask.scatter_(1, indices.long(), True)
    return mask

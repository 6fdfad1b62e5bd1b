"""Quantisation: group-wise round-to-nearest (RTN), AWQ-style activation scaling, and GPTQ.

A weight matrix (out, in) is cut into groups of `group_size` consecutive inputs per row
(-1: one group per row; a last partial group is allowed). Each group stores float16
parameters and one unsigned `bits`-bit code per weight. The rules are llama.cpp's, so that
at group size 32 our codes are bit-for-bit the GGUF types (tests check it against the
`gguf` package):

  symmetric, 2..7 bits   d = (the group's value of largest magnitude) / -2**(b-1)
                         c = clamp(trunc(w / d + 2**(b-1) + 0.5), 0, 2**b - 1)
                         w' = (c - 2**(b-1)) * d                          (Q4_0, Q5_0)
  symmetric, 8 bits      d = max|w| / 127, c = roundf(w / d) + 128, w' = (c - 128) * d   (Q8_0)
  asymmetric             d = (max - min) / (2**b - 1), m = min
                         c = clamp(trunc((w - m) / d + 0.5), 0, 2**b - 1)
                         w' = c * d + m                                   (Q4_1, Q5_1)

d and m are stored as float16 and w' is computed from the stored values, so the de-quantised
matrix is exactly what a loader of the artifact gets. Symmetric codes represent 0 exactly
(pruned weights stay 0); asymmetric ones do not, so a pruned matrix is masked after decoding.

Quantised group parameters (`scale_bits` < 16, "double quantisation" as in QLoRA, and what
llama.cpp's K-quants do with 6-bit sub-block scales): each row's d (and m) over its groups are
themselves stored as `scale_bits`-bit codes k with a float16 step s and base b per row,
d = k * s + b, computed in float32 from the stored values. The weight codes are then chosen
for those decoded parameters. At group 32 this cuts the parameters from 1 bit per weight
(two float16 per 32 weights) to 0.5 (8-bit) or 0.375 (6-bit).

Outlier-aware methods use the input Gram matrix G = E[x x^T] of the module (calibrate.py):
  awq   per-input-channel scales s = rms(x)^alpha (alpha searched on a grid), quantise W*s,
        store s, decode as Q(W*s)/s; alpha = 0 is plain RTN, so AWQ never does worse than RTN
        on the calibration objective tr(dW G dW^T).
  gptq  columns quantised in order, each one's error spread over the not-yet-quantised columns
        through the inverse Hessian (Frantar et al. 2022); same rules and storage as RTN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .linalg import single_threaded


@dataclass(frozen=True)
class QuantConfig:
    bits: int = 4
    group_size: int = 128  # -1: one group per output row
    symmetric: bool = False
    method: str = "rtn"  # a quantizer of the registry (compress/registry.py): 'rtn', 'awq' or 'gptq'
    scale_bits: int = 16  # 16: float16 group parameters; 2..8: quantised per row (module docstring)

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be 2..8, got {self.bits}")
        if self.scale_bits != 16 and not 2 <= self.scale_bits <= 8:
            raise ValueError(f"scale_bits must be 2..8 or 16, got {self.scale_bits}")
        if self.group_size != -1 and self.group_size < 1:
            raise ValueError(f"group_size must be positive or -1, got {self.group_size}")


@dataclass
class QuantizedMatrix:
    """What the artifact stores for one quantised matrix, and how it decodes."""

    codes: torch.Tensor  # uint8 (out, in), values < 2**bits
    scales: torch.Tensor  # float16 (out, groups): d (float32, decoded from `params`, when quantised)
    mins: torch.Tensor | None  # float16 (out, groups): m, asymmetric only (likewise)
    bits: int
    group_size: int  # as configured (-1 allowed)
    # float16 (in,): input-channel scales s (AWQ), stored beside the codes; decode divides by them
    input_scales: torch.Tensor | None = None
    scale_bits: int = 16
    # scale_bits < 16: what is stored for d and m, {"scales": ParamCodes, "mins": ParamCodes}
    params: dict | None = None

    @property
    def symmetric(self) -> bool:
        return self.mins is None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (codes, scales, minimums, input scales)."""
        return sum(t.nbytes for t in (self.codes, self.scales, self.mins, self.input_scales) if t is not None)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out_f, in_f = self.codes.shape
        w = torch.empty(out_f, in_f, dtype=torch.float32, device=self.codes.device)
        d = self.scales.float()
        m = None if self.mins is None else self.mins.float()
        for lo, hi, size, groups in _parts(in_f, self.group_size):
            dst = _view(w, lo, hi, size)
            dst.copy_(_view(self.codes, lo, hi, size))
            if m is None:
                dst.sub_(_offset(self.bits)).mul_(d[:, groups, None])
            else:
                dst.mul_(d[:, groups, None]).add_(m[:, groups, None])
        if self.input_scales is not None:
            w.div_(self.input_scales.float())
        return w.to(dtype)


@dataclass
class ParamCodes:
    """One row-wise quantised group parameter (d or m): value = codes * step + base per row."""

    codes: torch.Tensor  # uint8 (out, groups), values < 2**bits
    step: torch.Tensor  # float16 (out,)
    base: torch.Tensor  # float16 (out,)
    bits: int

    def decode(self) -> torch.Tensor:
        """float32 (out, groups), the same operations everywhere (quantiser, loader)."""
        return self.codes.float().mul_(self.step.float()[:, None]).add_(self.base.float()[:, None])

    @classmethod
    def encode(cls, x: torch.Tensor, bits: int) -> "ParamCodes":
        """Asymmetric round-to-nearest of each row of a float (out, groups) tensor."""
        x = x.float()
        lo, hi = x.amin(dim=1), x.amax(dim=1)
        grid = cls(codes=None, step=((hi - lo) / ((1 << bits) - 1)).half(), base=lo.half(), bits=bits)
        grid.codes = grid.nearest(x)[0].to(torch.uint8)
        return grid

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, decoded values) on this parameter's grid for values x (out, k), as float32."""
        s, b = self.step.float()[:, None], self.base.float()[:, None]
        inv = torch.where(s == 0, torch.zeros_like(s), 1 / s)
        codes = (x.float() - b).mul_(inv).round_().clamp_(0, (1 << self.bits) - 1)
        return codes, codes * s + b


def quantize_params(d: torch.Tensor, m: torch.Tensor | None, scale_bits: int) -> dict:
    """Group parameters (out, groups) as stored with `scale_bits` per value."""
    out = {"scales": ParamCodes.encode(d, scale_bits)}
    if m is not None:
        out["mins"] = ParamCodes.encode(m, scale_bits)
    return out


def _parts(in_f: int, group_size: int) -> list[tuple[int, int, int, slice]]:
    """Column ranges of the whole groups and of a last partial group:
    (first column, end column, group width, slice of group indices)."""
    g = in_f if group_size == -1 else group_size
    full = in_f // g * g
    parts = [(0, full, g, slice(0, full // g))] if full else []
    if full < in_f:
        parts.append((full, in_f, in_f - full, slice(full // g, full // g + 1)))
    return parts


def _view(t: torch.Tensor, lo: int, hi: int, size: int) -> torch.Tensor:
    """Columns lo:hi of an (out, in) tensor as an (out, groups, size) view (no copy)."""
    return t[:, lo:hi].unflatten(1, (-1, size))


def _offset(bits: int) -> int:
    return 1 << (bits - 1)


def _roundf_(x: torch.Tensor) -> torch.Tensor:
    """C roundf (half away from zero) in place, as ggml and gguf.quants.np_roundf compute it."""
    sign = torch.sign(x)
    a = x.abs_()
    floored = torch.floor(a)
    a.sub_(floored).mul_(2).floor_().add_(floored)
    return a.mul_(sign)


def group_params(wg: torch.Tensor, bits: int, symmetric: bool):
    """Per-group (d, inverse d, m) in float32 over the last dim; m is None when symmetric."""
    if symmetric and bits == 8:
        d = wg.abs().amax(dim=-1, keepdim=True) / 127
        m = None
    elif symmetric:
        idx = wg.abs().argmax(dim=-1, keepdim=True)
        d = wg.gather(-1, idx) / -_offset(bits)
        m = None
    else:
        lo = wg.amin(dim=-1, keepdim=True)
        d = (wg.amax(dim=-1, keepdim=True) - lo) / ((1 << bits) - 1)
        m = lo
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    return d, inv, m


def encode(wg: torch.Tensor, bits: int, inv: torch.Tensor, m: torch.Tensor | None, symmetric: bool) -> torch.Tensor:
    """Codes (as float32 integers) for values given their group's parameters: the same
    float32 operations, in the same order, as ggml's reference quantisers."""
    top = (1 << bits) - 1
    if symmetric and bits == 8:
        return _roundf_(wg * inv).clamp_(-127, 127).add_(128)
    if symmetric:
        return (wg * inv).add_(_offset(bits) + 0.5).trunc_().clamp_(0, top)
    return (wg - m).mul_(inv).add_(0.5).trunc_().clamp_(0, top)


def quantize_rtn(w: torch.Tensor, cfg: QuantConfig) -> QuantizedMatrix:
    """Group-wise round-to-nearest."""
    w = w.float()
    out_f, in_f = w.shape
    parts = _parts(in_f, cfg.group_size)
    found = [group_params(_view(w, lo, hi, size), cfg.bits, cfg.symmetric) for lo, hi, size, _ in parts]
    d = torch.cat([f[0].squeeze(-1) for f in found], dim=1)
    m = None if cfg.symmetric else torch.cat([f[2].squeeze(-1) for f in found], dim=1)
    params = None
    if cfg.scale_bits < 16:
        params = quantize_params(d, m, cfg.scale_bits)
        d = params["scales"].decode()
        m = params["mins"].decode() if m is not None else None
    codes = torch.empty(out_f, in_f, dtype=torch.uint8, device=w.device)
    for (lo, hi, size, groups), (_, inv, mg) in zip(parts, found):
        if params is not None:  # codes for the parameters as decoded from their codes
            dg = d[:, groups, None]
            mg = None if m is None else m[:, groups, None]
            inv = torch.where(dg == 0, torch.zeros_like(dg), 1 / dg)
        # else ggml's order: codes from the float32 parameters, which are then stored as float16
        _view(codes, lo, hi, size).copy_(encode(_view(w, lo, hi, size), cfg.bits, inv, mg, cfg.symmetric))
    if params is None:
        d, m = d.half(), None if m is None else m.half()
    return QuantizedMatrix(codes=codes, scales=d, mins=m, bits=cfg.bits, group_size=cfg.group_size,
                           scale_bits=cfg.scale_bits, params=params)


def output_error(w: torch.Tensor, w_hat: torch.Tensor, gram: torch.Tensor) -> float:
    """E||(W - W')x||^2 summed over outputs, for inputs with Gram matrix E[x x^T].
    float32: it ranks candidates; float64 matmuls are several times slower on CPUs."""
    diff = (w_hat - w).float()
    return float(((diff @ gram.float()) * diff).sum(dtype=torch.float64))


def awq_search(w: torch.Tensor, cfg: QuantConfig, gram: torch.Tensor, *, mask: torch.Tensor | None = None,
               grid: int = 11, max_rows: int = 256) -> torch.Tensor:
    """AWQ-style: the input scales s = rms(x)^alpha (alpha on a grid over [0, 1]) that minimise
    the output error under `gram`; rows are subsampled (evenly) for the search only."""
    w = w.float()
    rms = torch.diagonal(gram).float().clamp(min=0).sqrt().clamp(min=1e-8)
    rows = torch.linspace(0, w.shape[0] - 1, min(max_rows, w.shape[0])).round().long().unique()
    sample = w[rows]
    sample_mask = None if mask is None else mask[rows]
    best = (math.inf, None)
    for alpha in torch.linspace(0, 1, grid).tolist():
        s = _awq_scales(rms, alpha)
        q = _scaled_rtn(sample, cfg, s)
        w_hat = q.dequantize() if sample_mask is None else q.dequantize() * sample_mask
        err = output_error(sample, w_hat, gram)
        if err < best[0]:
            best = (err, s)
    return best[1]


def quantize_awq(w: torch.Tensor, cfg: QuantConfig, gram: torch.Tensor, *, mask: torch.Tensor | None = None,
                 scales: torch.Tensor | None = None) -> QuantizedMatrix:
    """Quantise W*s with RTN and store s (float16); s is searched unless given."""
    if scales is None:
        scales = awq_search(w, cfg, gram, mask=mask)
    return _scaled_rtn(w.float(), cfg, scales)


def _awq_scales(rms: torch.Tensor, alpha: float) -> torch.Tensor:
    s = rms.pow(alpha)
    s = s / (s.max() * s.min()).sqrt()
    return s.half()  # stored precision: the search sees exactly what is decoded


def _scaled_rtn(w: torch.Tensor, cfg: QuantConfig, s16: torch.Tensor) -> QuantizedMatrix:
    q = quantize_rtn(w * s16.float(), cfg)
    q.input_scales = s16
    return q


def quantize_gptq(w: torch.Tensor, cfg: QuantConfig, gram: torch.Tensor, *, mask: torch.Tensor | None = None,
                  damp: float = 0.01, block: int = 128) -> QuantizedMatrix:
    """GPTQ with the RTN rules per group (group parameters taken from the error-updated
    weights when the group starts). With `mask`, pruned weights are forced to 0 and that
    error is compensated too (SparseGPT with a fixed mask). With `scale_bits` < 16 each row's
    parameter grid (step, base) is RTN's for the unchanged weights, and every group's
    parameters are snapped to it when the group starts."""
    grid = quantize_rtn(w, cfg).params if cfg.scale_bits < 16 else None
    W = w.float().clone()
    out_f, in_f = W.shape
    g = in_f if cfg.group_size == -1 else cfg.group_size
    block = g * max(1, block // g) if g < in_f else in_f  # groups never straddle blocks
    H = gram.float().clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = _inverse_hessian_factor(H, damp)

    n_groups = math.ceil(in_f / g)
    codes = torch.zeros(out_f, in_f, dtype=torch.uint8)
    scales = torch.zeros(out_f, n_groups, dtype=torch.float16)
    mins = None if cfg.symmetric else torch.zeros(out_f, n_groups, dtype=torch.float16)
    if grid is not None:  # decoded parameters (float32) and their codes
        scales, mins = scales.float(), None if mins is None else mins.float()
        param_codes = {k: torch.zeros(out_f, n_groups, dtype=torch.uint8) for k in grid}
    keep = None if mask is None else mask.float()
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1 = W[:, i1:i2].clone()
        err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = i1 + j
            if col % g == 0:
                group = W1[:, j:j + g] if keep is None else W1[:, j:j + g] * keep[:, col:col + g]
                d, inv, m = group_params(group, cfg.bits, cfg.symmetric)
                if grid is not None:
                    k, d = grid["scales"].nearest(d.squeeze(-1)[:, None])
                    param_codes["scales"][:, col // g] = k.squeeze(-1).to(torch.uint8)
                    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
                    if m is not None:
                        k, m = grid["mins"].nearest(m.squeeze(-1)[:, None])
                        param_codes["mins"][:, col // g] = k.squeeze(-1).to(torch.uint8)
                d16 = d.half() if grid is None else d
                m16 = None if m is None else (m.half() if grid is None else m)
                scales[:, col // g] = d16.squeeze(-1)
                if mins is not None:
                    mins[:, col // g] = m16.squeeze(-1)
            x = W1[:, j:j + 1]
            target = x if keep is None else x * keep[:, col:col + 1]
            c = encode(target, cfg.bits, inv, m, cfg.symmetric)
            codes[:, col] = c.squeeze(-1)
            if cfg.symmetric:
                q = (c.float() - _offset(cfg.bits)) * d16.float()
            else:
                q = c.float() * d16.float() + m16.float()
            if keep is not None:
                q = q * keep[:, col:col + 1]
            e = (x - q) / Hinv1[j, j]
            W1[:, j:] -= e @ Hinv1[j:j + 1, j:]
            err1[:, j:j + 1] = e
        W[:, i2:] -= err1 @ Hinv[i1:i2, i2:]
    params = None
    if grid is not None:
        params = {k: ParamCodes(codes=param_codes[k], step=p.step, base=p.base, bits=p.bits) for k, p in grid.items()}
        scales = params["scales"].decode()  # what a loader decodes (the same values)
        mins = params["mins"].decode() if "mins" in params else None
    return QuantizedMatrix(codes=codes, scales=scales, mins=mins, bits=cfg.bits, group_size=cfg.group_size,
                           scale_bits=cfg.scale_bits, params=params)


def _inverse_hessian_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damping)^-1; damping grows until H is positive definite."""
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    mean_diag = torch.diagonal(H).mean()
    with single_threaded():
        for _ in range(6):
            L, info = torch.linalg.cholesky_ex(H + damp * mean_diag * eye)
            if int(info) == 0:
                return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
            damp *= 10
    raise ValueError("GPTQ: the calibration Gram matrix is not positive definite even with damping")

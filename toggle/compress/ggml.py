"""llama.cpp's own quantisers (K-quants, i-quants), called in its ggml library through ctypes.

    raw = quantize_rows(w, "Q4_K", imatrix=None)     # (rows, row bytes) uint8, as llama-quantize writes
    w2 = dequantize_rows(raw, "Q4_K", w.shape[1])    # float32, as llama.cpp decodes it

`quantize_rows` is `ggml_quantize_chunk` (what llama-quantize calls for every tensor) and
`dequantize_rows` the type's `to_float` from `ggml_get_type_traits`, both in libggml-base, so
the bytes toggle writes are llama.cpp's and the weights it evaluates are what llama.cpp decodes.
`imatrix` is llama.cpp's importance matrix for one tensor: the mean of x^2 per input channel over
the calibration tokens (the diagonal of the module's input Gram matrix E[x x^T]).

Which type a setting gets (`ggml_type`): the quantizer's bit-width menu (TYPES), then
llama.cpp's fallback for rows that do not split into the type's blocks (FALLBACK, from
tensor_type_fallback in llama.cpp's src/llama-quant.cpp): a K-quant's 256-value super-blocks
need a row length divisible by 256, IQ4_NL and the legacy types 32.
"""
from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import gguf
import numpy as np
import torch

from .. import llama_cpp

# quantizer name -> bits -> GGML type (the registry's ggml and ggml_iq methods)
TYPES = {
    "ggml": {2: "Q2_K", 3: "Q3_K", 4: "Q4_K", 5: "Q5_K", 6: "Q6_K", 8: "Q8_0"},
    "ggml_iq": {2: "IQ2_S", 3: "IQ3_S", 4: "IQ4_XS"},
}
# llama.cpp's fallback when a row does not split into the type's blocks (then F16 if that fails too)
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
            "IQ2_S": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL"}


def block_values(qtype: str) -> int:
    """Weights per block of a GGML type (256 for K-quants, 32 for the legacy types and IQ4_NL)."""
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0]


def row_bytes(qtype: str, n_per_row: int) -> int:
    """Bytes of one row of `n_per_row` weights in a GGML type (n_per_row a multiple of its block)."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    return n_per_row // block * size


def ggml_type(quantizer: str, bits: int, n_per_row: int) -> tuple[str | None, str | None]:
    """(the GGML type stored, the menu's type it falls back from or None) for a module whose rows
    hold `n_per_row` weights; (None, None) when the quantizer has no type for `bits`."""
    wanted = TYPES.get(quantizer, {}).get(bits)
    if wanted is None:
        return None, None
    if n_per_row % block_values(wanted) == 0:
        return wanted, None
    fallback = FALLBACK.get(wanted, wanted)
    if n_per_row % block_values(fallback):
        fallback = "F16"
    return fallback, wanted


def menu(quantizer: str) -> str:
    """The bits -> type menu of a ggml quantizer, for messages: '2 (Q2_K), 3 (Q3_K), ...'."""
    return ", ".join(f"{b} ({t})" for b, t in TYPES.get(quantizer, {}).items())


# --- the library calls --------------------------------------------------------------------------

_to_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


class _TypeTraits(ctypes.Structure):
    # struct ggml_type_traits in ggml/include/ggml.h
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", _to_float_t), ("from_float_ref", ctypes.c_void_p)]


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib = llama_cpp.library("ggml-base")
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    return lib


def _type_id(qtype: str) -> int:
    return int(gguf.GGMLQuantizationType[qtype])


def requires_imatrix(qtype: str) -> bool:
    return bool(_lib().ggml_quantize_requires_imatrix(_type_id(qtype)))


def library_row_bytes(qtype: str, n_per_row: int) -> int:
    """ggml_row_size: llama.cpp's own count (tests check row_bytes against it)."""
    return int(_lib().ggml_row_size(_type_id(qtype), n_per_row))


def quantize_rows(w: torch.Tensor | np.ndarray, qtype: str, imatrix: torch.Tensor | np.ndarray | None = None,
                  *, threads: int = 2) -> np.ndarray:
    """llama.cpp's quantisation of a float32 (rows, n) matrix to `qtype`: (rows, row bytes) uint8.
    Rows are independent, so they are split across `threads` (the result does not depend on it)."""
    src = np.ascontiguousarray(_numpy(w), dtype=np.float32)
    rows, n = src.shape
    if qtype == "F16":
        return src.astype(np.float16).view(np.uint8).reshape(rows, -1)
    if n % block_values(qtype):
        raise ValueError(f"{qtype}: rows of {n} values do not split into blocks of {block_values(qtype)}")
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(_numpy(imatrix), dtype=np.float32).reshape(-1)
        if qw.shape[0] != n:
            raise ValueError(f"imatrix has {qw.shape[0]} values for rows of {n}")
    elif requires_imatrix(qtype):
        raise ValueError(f"{qtype} needs an importance matrix (calibration statistics)")
    lib, tid = _lib(), _type_id(qtype)
    size = row_bytes(qtype, n)
    dst = np.empty((rows, size), dtype=np.uint8)
    qw_ptr = None if qw is None else qw.ctypes.data

    def run(lo: int, hi: int) -> None:
        done = lib.ggml_quantize_chunk(tid, src[lo:hi].ctypes.data, dst[lo:hi].ctypes.data, 0, hi - lo, n, qw_ptr)
        if done != (hi - lo) * size:
            raise RuntimeError(f"ggml_quantize_chunk({qtype}) wrote {done} bytes, expected {(hi - lo) * size}")

    bounds = np.linspace(0, rows, max(1, min(threads, rows)) + 1).astype(int)
    chunks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    if len(chunks) == 1:
        run(*chunks[0])
    else:
        with ThreadPoolExecutor(len(chunks)) as pool:  # ctypes releases the GIL during the call
            list(pool.map(lambda c: run(*c), chunks))
    return dst


def dequantize_rows(raw: np.ndarray, qtype: str, n_per_row: int) -> np.ndarray:
    """llama.cpp's decoding (the type's to_float) of (rows, row bytes) uint8 blocks: float32 (rows, n)."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    rows = raw.shape[0]
    if qtype == "F16":
        return raw.view(np.float16).reshape(rows, n_per_row).astype(np.float32)
    out = np.empty((rows, n_per_row), dtype=np.float32)
    traits = _lib().ggml_get_type_traits(_type_id(qtype)).contents
    traits.to_float(raw.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), rows * n_per_row)
    return out


def _numpy(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# --- the quantizer methods (registry: ggml, ggml_iq) ---------------------------------------------

class GGMLMatrix:
    """One matrix quantised by llama.cpp: its GGML type, the raw blocks a GGUF file stores, and the
    float32 weights llama.cpp decodes them to (what toggle evaluates)."""

    input_scales = None
    mins = None  # not a toggle code layout: pruned zeros are not guaranteed (the applier masks)

    def __init__(self, qtype: str, raw: np.ndarray, n_per_row: int, bits: int, *, wanted: str | None = None,
                 imatrix: bool = False):
        self.qtype = qtype  # the type stored (after llama.cpp's fallback)
        self.wanted = wanted  # the menu's type when it fell back, else None
        self.raw = raw  # (rows, row bytes) uint8
        self.bits = bits
        self.imatrix = imatrix
        self.group_size = block_values(qtype) if qtype != "F16" else n_per_row
        self._values = torch.from_numpy(dequantize_rows(raw, qtype, n_per_row))

    @property
    def symmetric(self) -> bool:
        return False

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self._values.shape)

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes + self._values.nbytes)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._values.to(dtype, copy=True)  # callers may write into it (the applier masks in place)


def quantize(w: torch.Tensor, cfg, gram: torch.Tensor | None = None, mask=None, prepared=None) -> GGMLMatrix:
    """The registry's quantize() for the ggml methods: cfg.method and cfg.bits pick the type
    (`ggml_type`), `gram`'s diagonal is the importance matrix when there are statistics."""
    n = w.shape[1]
    qtype, wanted = ggml_type(cfg.method, cfg.bits, n)
    if qtype is None:
        raise ValueError(f"quantizer {cfg.method} has no type for {cfg.bits} bits; its menu: {menu(cfg.method)}")
    imatrix = None if gram is None else torch.diagonal(gram).float().clamp(min=0)
    raw = quantize_rows(w, qtype, imatrix)
    return GGMLMatrix(qtype, raw, n, cfg.bits, wanted=wanted, imatrix=imatrix is not None and qtype not in ("F16", "Q8_0"))

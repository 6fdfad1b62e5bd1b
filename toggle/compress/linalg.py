"""Matrix decompositions (SVD, Cholesky) run on one thread.

MKL's threaded LAPACK waits on barriers; when the cores are shared with other work
(a search running trials, other processes) a 576x576 SVD measured 10 s on two threads
against 0.1 s on one. Decompositions here are small and many, so one thread each is both
predictable and fast; matmuls keep torch's thread pool.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def single_threaded():
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

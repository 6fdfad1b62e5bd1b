"""Compression arithmetic runs on one thread.

Threaded kernels (MKL's LAPACK, torch's OpenMP pool) wait on barriers: when the cores are
shared with other work (other processes, a search's own workers) every parallel region can
stall for a scheduler time slice. Measured on a busy 2-core machine: a 576x576 SVD took 10 s
on two threads and 0.1 s on one; a 256x576 element-wise op took 4 ms instead of 50 us. The
operators do many small operations per module, so one thread is both predictable and fast;
forward passes keep torch's thread pool.
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

"""Running torch on the calling thread only.

The engine's arrays are cache-sized chunks (per-step vectors, quadrature lattices of a few thousand
points), which gain little from a second intra-op thread; on a machine other processes share, each op's
barrier then waits for a descheduled worker. Measured on two cores with one other busy process:
``pathkl kl --ref mog-rotated --cov full --steps 16`` 20.3 s on two threads, 5.2 s on one; the Gaussian
closed form at d = 12288 6x slower on two.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one intra-op thread, restoring the count after. Not thread-safe: torch's
    thread count is process-wide."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

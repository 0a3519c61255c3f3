"""Test-session settings.

The suite runs on one intra-op thread (and subprocesses inherit ``OMP_NUM_THREADS=1``): its
tensors are small, and on a 2-core machine that another process shares, torch's second thread makes
every small op wait at a barrier for a core it does not get. Measured with one other busy process:
tests/test_mixture.py + test_error_contract.py take 88 s on two threads, 20 s on one.
"""

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

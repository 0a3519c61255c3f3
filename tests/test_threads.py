"""pathkl.threads: the engine runs on one intra-op thread and gives the caller's count back."""

import pytest
import torch

import pathkl
from pathkl.threads import one_thread


def test_one_thread_restores_the_count_even_on_error():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(ZeroDivisionError), one_thread():
            assert torch.get_num_threads() == 1
            _ = 1 / 0
        assert torch.get_num_threads() == 2
        pathkl.path_kl(pathkl.load_reference("mog-1d"), pathkl.get_schedule("vp-linear").grid(4),
                       pathkl.get_family("beta"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

"""Fixtures shared by the unit tests (the repository's conftest.py holds what the notebooks share too)."""

import pytest
import torch.distributed as dist


@pytest.fixture
def group():
    """A gloo process group of one rank, in this process: every check and collective of a DDP or FSDP path
    runs, with nothing to wait for; destroyed after the test, whatever it raised."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()

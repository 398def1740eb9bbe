"""The strategy: fit's one door to distribution (one process, or DDP in a process group)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from training_setup import classification_data, make_model

from companion.metrics import EpochMeter
from companion.strategy import DDPStrategy, SingleDeviceStrategy, current_strategy


class RecordingSampler(DistributedSampler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)
        super().set_epoch(epoch)


def sharded_loader(n=20, batch_size=8):
    X, y = classification_data(n)
    dataset = TensorDataset(X, y)
    return DataLoader(dataset, batch_size=batch_size, sampler=RecordingSampler(dataset, 1, 0, seed=0))


def measured(loader, model):
    meter = EpochMeter(nn.CrossEntropyLoss())
    with torch.no_grad():
        for x, y in loader:
            output = model(x)
            meter.update(nn.functional.cross_entropy(output, y), output, y)
    return meter


def test_one_process_gets_the_single_device_strategy_and_a_process_group_the_ddp_one():
    assert type(current_strategy()) is SingleDeviceStrategy
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert type(current_strategy()) is DDPStrategy
    finally:
        dist.destroy_process_group()


def test_the_single_device_strategy_changes_nothing_but_the_samplers_epoch():
    strategy, model, loader = SingleDeviceStrategy(), make_model(), sharded_loader()
    assert strategy.is_global_zero
    strategy.setup(object(), None, torch.device("cpu"))  # nothing to check in one process
    assert strategy.wrap_model(model, torch.device("cpu")) is model
    with strategy.block_backward_sync(model, True):
        pass
    strategy.start_epoch(loader, 3)
    assert loader.sampler.epochs == [2], "1-based epochs, 0-based for the sampler"
    meter = measured(loader, model)
    assert strategy.reduce(meter, loader) is meter and strategy.repeats(loader) == 0
    assert strategy.broadcast({"epoch": 1}) == {"epoch": 1} and strategy.any_rank(True) is True


def test_the_ddp_strategy_wraps_the_model_blocks_the_all_reduce_and_gathers_the_metrics(group):
    strategy, model, loader = DDPStrategy(), make_model(), sharded_loader()
    strategy.setup(loader, len(loader), torch.device("cpu"))
    net = strategy.wrap_model(model, torch.device("cpu"))
    assert isinstance(net, DistributedDataParallel) and net.module is model
    assert strategy.wrap_model(net, torch.device("cpu")) is net, "a wrapped model is taken as it is"
    with strategy.block_backward_sync(net, True):
        assert not net.require_backward_grad_sync, "a batch before its group's last: no all-reduce"
    with strategy.block_backward_sync(net, False):
        assert net.require_backward_grad_sync
    meter = measured(loader, model)
    gathered = strategy.reduce(meter, loader)
    assert gathered is not meter and gathered.compute() == pytest.approx(meter.compute())
    X, y = classification_data(8)
    whole = DataLoader(TensorDataset(X, y), batch_size=4)  # no DistributedSampler: measured whole
    assert strategy.reduce(measured(whole, model), whole).count == 8 and strategy.repeats(whole) == 0
    assert strategy.any_rank(False) is False and strategy.broadcast([1, 2]) == [1, 2]


def test_the_ddp_strategy_refuses_a_loader_without_distributed_sampler_on_every_rank(group):
    X, y = classification_data(16)
    with pytest.raises(ValueError, match=r"rank 0: train_loader has no DistributedSampler"):
        DDPStrategy().setup(DataLoader(TensorDataset(X, y), batch_size=4), 4, torch.device("cpu"))

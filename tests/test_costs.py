"""costs: parameters, forward latency and peak memory of a model, by the same functions on every device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpsearch import costs


def test_params_count_trainable_ones_once() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 2))
    model[3].bias.requires_grad_(False)
    assert costs.count_params(model) == 4 * 4 + 4 + 4 * 2


def test_latency_is_a_median_of_timed_passes_and_keeps_the_mode() -> None:
    calls = []
    model = nn.Sequential(nn.Linear(8, 8))
    model.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    model.train()
    ms = costs.latency_ms(model, torch.zeros(3, 8), warmup=2, repeats=5)
    assert ms > 0 and len(calls) == 7 and not any(calls)  # warm-up included, no autograd
    assert model.training


def test_peak_memory_on_the_cpu_is_the_rss_training_added() -> None:
    meter = costs.MemoryMeter(torch.device("cpu"))
    assert meter.kind == costs.RSS_DELTA
    meter.start()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB touched
    peak = meter.peak_mb()
    del block
    assert peak >= 60  # the high-water mark holds it even once freed


@pytest.mark.gpu
def test_latency_on_cuda_is_timed_by_events_not_the_host_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def host_clock(*_: object) -> list[float]:
        raise AssertionError("CUDA latency read the host clock")

    monkeypatch.setattr(costs, "_host_times", host_clock)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).cuda()
    assert costs.latency_ms(model, torch.zeros(64, 256, device="cuda"), warmup=2, repeats=5) > 0


@pytest.mark.gpu
def test_peak_memory_on_cuda_is_the_allocators_peak_since_the_start() -> None:
    meter = costs.MemoryMeter(torch.device("cuda"))
    assert meter.kind == costs.CUDA_PEAK
    before = torch.ones(16 * 2**20 // 4, device="cuda")  # 16 MiB, then freed: the reset forgets it
    del before
    meter.start()
    held = torch.cuda.memory_allocated() / 2**20  # what other tests left allocated counts from the start
    block = torch.ones(64 * 2**20 // 4, device="cuda")
    del block
    assert 64 <= meter.peak_mb() - held < 64 + 16

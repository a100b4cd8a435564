"""Adding a kernel is one new module plus the spaces that list it: a kernel with a choice
option, defined here, is registered, declared in a space YAML, trained through the supernet,
measured into a latency table and searched end to end with no other code touched."""

from __future__ import annotations

import random

import optuna
import pytest
import torch
import yaml
from runs import FAST
from torch import nn

from nas import study as search
from nas import study_trials
from nas.arch import Arch
from nas.kernels import AttentionKernel, registry
from nas.latency.build import build
from nas.latency.profiler import Profiler
from nas.report import write_outputs
from nas.selection import load_candidates
from nas.space_file import load_space
from nas.supernet import SuperNet, extract


class PooledAttention(AttentionKernel):
    """Every token gets the mean (or max) of the values, scaled per head."""

    name = "test-pooled"
    variants = ({"mode": "mean"}, {"mode": "max"})

    def __init__(self, head_dim: int, num_heads: int, mode: str = "mean") -> None:
        super().__init__(head_dim, num_heads)
        self.mode = mode
        self.scale = nn.Parameter(torch.ones(num_heads))

    def attend(self, q, k, v, grid):
        pooled = v.mean(2, keepdim=True) if self.mode == "mean" else v.amax(2, keepdim=True)
        return (pooled * self.scale[: v.shape[1]].view(1, -1, 1, 1)).expand_as(v)

    def macs(self, heads, grid):
        return heads * grid[0] * grid[1] * self.head_dim


@pytest.fixture
def pooled_kernel():
    registry.register(PooledAttention)
    yield
    del registry._KERNELS[PooledAttention.name]


def test_a_new_kernel_with_an_option_is_searched_end_to_end(pooled_kernel, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny-new",
                "image_size": 16,
                "patch_size": 4,
                "in_chans": 1,
                "num_classes": 4,
                "head_dim": 8,
                "embed_dim": [16, 32],
                "depth": [1, 2],
                "heads": [1, 2],
                "mlp_ratio": [1, 2],
                "kernels": ["softmax", "test-pooled"],
                "test-pooled": {"mode": ["mean", "max"]},
            }
        )
    )
    space = load_space(path)
    assert [c.label for c in space.kernel_choices()] == ["softmax", "test-pooled-mean", "test-pooled-max"]

    torch.manual_seed(0)
    net = SuperNet(space).eval()
    x = torch.randn(8, 1, 16, 16)
    y = torch.randint(0, 4, (8,))
    arch = space.sample(random.Random(3))
    torch.testing.assert_close(extract(net, arch).eval()(x), net(x, arch))

    profiler = Profiler("cpu", "fp32", 1, protocol=FAST)
    table = build(
        space,
        profiler.fingerprint(),
        tmp_path / "table.json",
        profiler.measure_probes,
        FAST,
        progress=lambda line: None,
    )

    def evaluate(archs):
        with torch.no_grad():
            return [
                {"accuracy": (net(x, a).argmax(-1) == y).float().mean().item(), "macs": 1, "params": 1} for a in archs
            ]

    study = search.open_study_in_memory(search.SearchConfig(sampler="random", seed=0))
    search.run_search(
        study,
        space,
        table,
        evaluate,
        search.SearchConfig(trials=24, batch=4, sampler="random"),
        progress=lambda line: None,
    )
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    modes = {layer.kernel_spec.label for t in trials for layer in study_trials.arch_of(t, space).layers}
    assert {"test-pooled-mean", "test-pooled-max"} <= modes
    # The one codec: what the study, trials.csv and arch.json store reads back to the same arch.
    write_outputs(study, tmp_path, None)
    stored = {c.trial: c.arch for c in load_candidates(tmp_path)}
    for t in trials:
        arch = study_trials.arch_of(t, space)
        assert stored[t.number] == arch == space.validate(Arch.from_json(arch.to_json()))
        assert table.predict(arch) > 0

"""Supernet: extraction parity, weight entanglement, timm interop, safetensors round-trip."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file

from nas import subnet, timm_compat
from nas.errors import NasError
from nas.space_file import load_space
from nas.subnet import ViT
from nas.supernet import SuperNet, extract


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter (norm scales and biases too) so a wrong slice cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return module


@pytest.mark.parametrize("name", ["digits-tiny", "deit-tiny", "hires"])
def test_extracted_model_equals_the_supernet_on_20_random_archs(name):
    space = load_space(name)
    torch.manual_seed(0)
    net = randomized(SuperNet(space)).eval()
    x = torch.randn(2 if name == "digits-tiny" else 1, space.in_chans, space.image_size, space.image_size)
    rng = random.Random(42)
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(18)]
    with torch.no_grad():
        for arch in archs:
            standalone = extract(net, arch).eval()
            assert not any(isinstance(m, SuperNet) for m in standalone.modules())
            diff = (net(x, arch) - standalone(x)).abs().max().item()
            assert diff <= 1e-5, f"{arch}: max abs logit difference {diff}"


def test_largest_subnet_of_each_kernel_uses_every_weight():
    space = load_space("digits-tiny")
    net = SuperNet(space)
    x = torch.randn(4, 1, 32, 32)
    for choice in space.kernel_choices():
        net.zero_grad()
        arch = space.validate(space.largest(kernel=choice))
        (net(x, arch) * torch.randn(4, space.num_classes)).sum().backward()
        for name, param in net.named_parameters():
            in_kernel = ".kernels." in name
            if in_kernel and f".kernels.{choice.label}." not in name:
                assert param.grad is None, f"{name} got a gradient from {choice.label}"
                continue
            grad = param.grad
            assert grad is not None, f"{choice.label}: {name} unused"
            if name.endswith("qkv.bias") and choice.name in ("softmax", "window"):
                # Softmax ignores the key bias: q·(k + b) shifts all of a query's logits equally.
                q_bias, k_bias, v_bias = grad.view(3, -1)
                assert k_bias.abs().max() <= 1e-6 * v_bias.abs().max()
                grad = torch.cat([q_bias, v_bias])
            if name.endswith(
                "positional_encoding"
            ):  # added to k before φ's ReLU: an entry whose k + P < 0 on every image gets 0
                assert bool((grad != 0).float().mean() > 0.3), f"{choice.label}: {name} mostly unused"
                continue
            assert bool((grad != 0).all()), f"{choice.label}: {name} not fully used"


def test_smaller_subnet_leaves_the_other_weights_untouched():
    space = load_space("digits-tiny")
    torch.manual_seed(0)
    net = SuperNet(space)
    arch = space.smallest()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(net(torch.randn(4, 1, 32, 32), arch), torch.arange(4)).backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    optimizer.step()
    for name, param in net.named_parameters():
        grad = grads[name]
        changed = param.detach() != before[name]
        if grad is None:
            assert not changed.any(), name
            continue
        assert not (changed & (grad == 0)).any(), f"{name}: an entry without gradient changed"
    # Outside the leading slices nothing was touched: e.g. MLP rows beyond the smallest hidden width.
    fc1 = net.blocks[0].fc1.weight
    hidden = arch.layers[0].hidden_dim(arch.embed_dim)
    assert torch.equal(fc1.detach()[hidden:], before["blocks.0.fc1.weight"][hidden:])
    assert torch.equal(fc1.detach()[:, arch.embed_dim :], before["blocks.0.fc1.weight"][:, arch.embed_dim :])
    assert torch.equal(net.blocks[2].fc1.weight.detach(), before["blocks.2.fc1.weight"])  # depth 2 of 4


def test_timm_parity_both_ways():
    space = load_space("deit-tiny")
    torch.manual_seed(0)
    ours = randomized(ViT(space.largest())).eval()  # DeiT-Tiny dims: 192 wide, 12 deep, 3 heads of 64
    x = torch.randn(2, 3, 224, 224)
    vit = timm_compat.to_timm(ours).eval()
    with torch.no_grad():
        assert (ours(x) - vit(x)).abs().max().item() <= 1e-5
        back = timm_compat.from_timm(randomized(vit, seed=1)).eval()
        assert (back(x) - vit(x)).abs().max().item() <= 1e-5
    assert back.arch.to_dict()["layers"] == space.largest().to_dict()["layers"]


def test_timm_refuses_archs_it_cannot_express():
    space = load_space("digits-tiny")
    with pytest.raises(NasError, match="only softmax-only archs"):
        timm_compat.to_timm(ViT(space.smallest()))


def test_safetensors_round_trip(tmp_path):
    space = load_space("digits-tiny")
    arch = space.sample(random.Random(5))
    model = randomized(ViT(arch)).eval()
    subnet.save(model, tmp_path)
    assert load_file(str(tmp_path / "model.safetensors"))  # plain tensors, no pickle
    again = subnet.load(tmp_path).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert again.arch == arch


def test_loading_a_corrupt_weights_file_is_a_clear_error(tmp_path):
    model = ViT(load_space("digits-tiny").smallest())
    subnet.save(model, tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(NasError, match="not a readable safetensors file"):
        subnet.load(tmp_path)


# ---- projections per kernel group (a space with `projections: kernel`) --------------------------------


def grouped(name: str = "digits-tiny"):
    from dataclasses import replace

    return replace(load_space(name), projections="kernel")


def test_grouped_projections_extract_each_kernel_choice_exactly():
    space = grouped()
    torch.manual_seed(0)
    net = randomized(SuperNet(space)).eval()  # every group perturbed differently: a wrong group cannot hide
    x = torch.randn(2, space.in_chans, space.image_size, space.image_size)
    rng = random.Random(7)
    archs = [space.largest(kernel=c) for c in space.kernel_choices()] + [space.sample(rng) for _ in range(10)]
    with torch.no_grad():
        for arch in archs:
            diff = (net(x, arch) - extract(net, arch).eval()(x)).abs().max().item()
            assert diff <= 1e-5, f"{arch}: max abs logit difference {diff}"
    assert sorted(net.blocks[0].qkv_groups) == sorted(c.label for c in space.kernel_choices())


def test_a_subnet_backward_reaches_only_its_own_groups_projections():
    space = grouped()
    net = SuperNet(space)
    arch = space.sample(random.Random(3))
    (net(torch.randn(2, 1, 32, 32), arch).sum()).backward()
    for i, block in enumerate(net.blocks):
        own = arch.layers[i].kernel_spec.label if i < arch.depth else None
        for groups in (block.qkv_groups, block.proj_groups):
            for label, layer in groups.items():
                assert (layer.weight.grad is not None) == (label == own), f"block {i} group {label}"


def test_tied_groups_train_as_shared_projections_and_split_into_copies_with_their_optimizer_state():
    space = grouped()
    torch.manual_seed(0)
    shared_space = load_space("digits-tiny")
    net, shared = SuperNet(space), SuperNet(shared_space)
    first = next(iter(net.blocks[0].qkv_groups))
    # the grouped supernet starts from the shared one's weights: its first group is the shared qkv / proj
    state = {
        k.replace(f"qkv_groups.{first}.", "qkv.").replace(f"proj_groups.{first}.", "proj."): v
        for k, v in net.state_dict().items()
        if "_groups." not in k or f"_groups.{first}." in k
    }
    shared.load_state_dict(state)
    net.tie_projections(True)
    archs = [space.sample(random.Random(s)) for s in range(4)]
    x, y = torch.randn(8, 1, 32, 32), torch.arange(8) % space.num_classes
    opt_a, opt_b = torch.optim.AdamW(net.parameters(), lr=1e-2), torch.optim.AdamW(shared.parameters(), lr=1e-2)
    for arch in archs:  # tied, the grouped supernet trains exactly as the shared one
        for model, opt in ((net, opt_a), (shared, opt_b)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x, arch), y).backward()
            opt.step()
    with torch.no_grad():
        for arch in archs:
            assert (net(x, arch) - shared(x, arch)).abs().max().item() <= 1e-5
    net.split_projections(opt_a)
    for block in net.blocks:
        for groups in (block.qkv_groups, block.proj_groups):
            lead = next(iter(groups.values()))
            for layer in groups.values():
                assert torch.equal(layer.weight, lead.weight) and torch.equal(layer.bias, lead.bias)
                if lead.weight in opt_a.state:
                    assert torch.equal(opt_a.state[layer.weight]["exp_avg_sq"], opt_a.state[lead.weight]["exp_avg_sq"])
    with torch.no_grad():
        for arch in archs:  # split, every kernel choice starts from where the shared training stopped
            assert (net(x, arch) - shared(x, arch)).abs().max().item() <= 1e-5


def test_a_grouped_supernet_trains_tied_then_split_and_its_groups_part(tmp_path):
    from nas.data import load_dataset
    from nas.rundir import RunDir
    from nas.training import TrainConfig, train_supernet

    space = grouped()
    dataset = load_dataset(None, space.image_size, space.in_chans)
    dataset.split = {**dataset.split, "train": dataset.split["train"][:256]}
    train_supernet(
        space, dataset, TrainConfig(epochs=2, batch_size=64, random_subnets=1, projection_warmup=0.5), tmp_path
    )
    net = RunDir(tmp_path).supernet(RunDir(tmp_path).space_and_data()[0])  # the run records the grouped space
    groups = list(net.blocks[0].qkv_groups.values())
    assert not all(torch.equal(groups[0].weight, g.weight) for g in groups[1:])  # trained apart after the split
    assert not any(block.tied for block in net.blocks)
    with pytest.raises(NasError, match="--projection-warmup 1.0"):
        train_supernet(space, dataset, TrainConfig(epochs=2, projection_warmup=1.0), tmp_path / "other")

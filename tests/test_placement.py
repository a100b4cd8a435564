"""GPU code paths verified without a GPU: with the model and inputs on the `meta` device, and
under FakeTensorMode with tensors made on "cuda", any tensor that the model, loss or step
creates on the CPU raises (a CPU tensor of more than 0 dims mixed with meta or fake-CUDA ones).
Real `gpu` tests beside them run the same steps on CUDA and skip without it."""

from __future__ import annotations

import random

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from nas.compute import Compute
from nas.sampling import sandwich
from nas.space_file import load_space
from nas.supernet import SuperNet, extract
from nas.train_step import make_optimizer, optimizer_step, sandwich_step
from nas.training import TrainConfig

SPACE = load_space("digits-tiny")  # every kernel of the registry, Taylor's orders and variants
META = Compute(torch.device("meta"))
CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False on this machine"
)


def fake_cuda_works() -> bool:
    """Older torch (2.6) initialises the CUDA driver for some ops on fake CUDA tensors."""
    try:
        with FakeTensorMode():
            torch.nn.functional.conv2d(
                torch.empty(1, 1, 4, 4, device="cuda"), torch.empty(2, 1, 2, 2, device="cuda")[:1]
            )
        return True
    except RuntimeError:
        return False


FAKE_CUDA = pytest.mark.skipif(
    not fake_cuda_works(), reason="this torch's fake CUDA tensors need a CUDA driver (checked with one conv)"
)


def on_fake_cuda(module: torch.nn.Module, mode: FakeTensorMode) -> torch.nn.Module:
    """`module` with every parameter and buffer replaced by a fake CUDA tensor of its shape
    (made under `mode`; building under a "cuda" default device would run the init kernels)."""
    shapes = {k: (v.shape, v.dtype) for k, v in module.state_dict(keep_vars=True).items()}
    with mode:
        state = {k: torch.empty(shape, dtype=dtype, device="cuda") for k, (shape, dtype) in shapes.items()}
    module.load_state_dict(state, assign=True)
    assert all(t.device.type == "cuda" for t in [*module.parameters(), *module.buffers()])
    return module


def batch(device, n: int = 4):
    return torch.randn(n, SPACE.in_chans, SPACE.image_size, SPACE.image_size, device=device), torch.randint(
        0, SPACE.num_classes, (n,), device=device
    )


@pytest.mark.parametrize("choice", SPACE.kernel_choices(), ids=lambda c: c.label)
def test_a_sandwich_step_of_every_kernel_runs_on_the_meta_device(choice):
    torch.manual_seed(0)
    net = SuperNet(SPACE).to("meta")
    optimizer = make_optimizer(net, TrainConfig())
    x, y = batch("meta")
    archs = [SPACE.validate(SPACE.largest(kernel=choice))] + sandwich(SPACE, random.Random(0), 1)[1:]
    total, finite = sandwich_step(net, archs, x, y, distill=0.5, label_smoothing=0.1, compute=META)
    assert total.device.type == "meta" and finite.device.type == "meta"
    optimizer_step(net, optimizer)
    assert all(p.device.type == "meta" for p in net.parameters())
    moments = [
        v for state in optimizer.state.values() for k, v in state.items() if k != "step"
    ]  # AdamW keeps its step count on the CPU by design
    assert moments and all(v.device.type == "meta" for v in moments)


def test_evaluation_and_extraction_run_on_the_meta_device():
    net = SuperNet(SPACE).to("meta").eval()
    x, _ = batch("meta")
    for choice in SPACE.kernel_choices():
        arch = SPACE.validate(SPACE.largest(kernel=choice))
        with torch.no_grad():
            assert net(x, arch).device.type == "meta"
    arch = SPACE.sample(random.Random(1))
    model = extract(SuperNet(SPACE), arch).to("meta")
    assert model(x).shape == (4, SPACE.num_classes)


@FAKE_CUDA
@pytest.mark.parametrize("choice", SPACE.kernel_choices(), ids=lambda c: c.label)
def test_forward_passes_of_every_kernel_stay_on_fake_cuda(choice):
    arch = SPACE.validate(SPACE.largest(kernel=choice))
    mode = FakeTensorMode()
    net = on_fake_cuda(SuperNet(SPACE), mode)
    with mode:
        x, _ = batch("cuda")
        logits = net(x, arch)
        assert logits.device.type == "cuda"
        for sub in sandwich(SPACE, random.Random(2), 1):
            assert net(x, sub).device.type == "cuda"


@FAKE_CUDA
def test_a_standalone_subnet_forward_stays_on_fake_cuda():
    from nas.subnet import ViT

    arch = SPACE.sample(random.Random(3))
    mode = FakeTensorMode()
    model = on_fake_cuda(ViT(arch), mode)
    with mode:
        x, _ = batch("cuda")
        assert model(x).device.type == "cuda"


def test_a_bf16_autocast_training_step_on_the_cpu_changes_the_weights():
    torch.manual_seed(0)
    net = SuperNet(SPACE)
    optimizer = make_optimizer(net, TrainConfig())
    before = [p.detach().clone() for p in net.parameters()]
    x, y = batch("cpu", 8)
    compute = Compute.parse("cpu", "bf16")
    total, finite = sandwich_step(net, sandwich(SPACE, random.Random(0), 1), x, y, 0.5, 0.1, compute)
    assert bool(finite) and total.dtype == torch.float32
    optimizer_step(net, optimizer)
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))


def test_fp16_with_a_gradient_scaler_on_the_cpu():
    from nas.compute import cpu_fp16_autocast

    if not cpu_fp16_autocast():
        pytest.skip("this torch has no fp16 autocast on the CPU")
    try:
        compute = Compute.parse("cpu", "fp16")
        scaler = compute.scaler()
    except (RuntimeError, AttributeError) as error:
        pytest.skip(f"this torch has no CPU GradScaler ({error})")
    torch.manual_seed(0)
    net = SuperNet(SPACE)
    optimizer = make_optimizer(net, TrainConfig())
    x, y = batch("cpu", 8)
    total, finite = sandwich_step(net, sandwich(SPACE, random.Random(0), 1), x, y, 0.5, 0.1, compute, scaler)
    assert bool(finite)
    optimizer_step(net, optimizer, scaler)
    assert scaler.get_scale() > 0


def test_a_standalone_fine_tuning_step_runs_on_the_meta_device():
    """The one standalone loop (verification, ground truth, benchmarks, export fine-tuning) on `compute`'s device."""
    from nas.data import load_dataset
    from nas.standalone import Recipe, Standalone

    data = load_dataset(None, SPACE.image_size, SPACE.in_chans)
    arch = SPACE.sample(random.Random(4))
    model = extract(SuperNet(SPACE), arch)
    run = Standalone(arch, 0, Recipe(epochs=1, batch_size=8), data, META, model=model)
    x, y = data.batch("train", list(range(8)))
    loss = run.update(x, y)
    assert loss.device.type == "meta" and run.step == 1 and run.model is model
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(v.device.type == "meta" for state in run.optimizer.state.values() for v in state.values() if v.dim())


def test_export_fine_tuning_in_bf16_on_the_cpu_trains_the_inherited_weights_in_place():
    from nas.data import load_dataset
    from nas.exporter import finetune

    data = load_dataset(None, SPACE.image_size, SPACE.in_chans)
    model = extract(SuperNet(SPACE), SPACE.smallest())
    before = [p.detach().clone() for p in model.parameters()]
    lines = []
    finetune(model, data, 1, batch_size=256, progress=lines.append, compute=Compute.parse("cpu", "bf16"))
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert not model.training and len(lines) == 1 and lines[0].startswith("fine-tune epoch 1/1: loss ")


def test_compute_device_errors_are_one_line():
    from nas.errors import NasError

    with pytest.raises(NasError, match="use auto, cpu, cuda"):
        Compute.parse("tpu")
    with pytest.raises(NasError, match="--precision 'fp8'"):
        Compute.parse("cpu", "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(NasError, match="CUDA is not available on this machine; use --compute-device cpu"):
            Compute.parse("cuda")
        assert Compute.parse("auto").device.type == "cpu"


# ---- on a real GPU ---------------------------------------------------------------------------


@pytest.mark.gpu
@CUDA
def test_two_bf16_training_steps_and_an_evaluation_on_cuda():
    from nas.data import load_dataset
    from nas.evaluate import accuracy

    compute = Compute.parse("cuda", "bf16")
    torch.manual_seed(0)
    net = SuperNet(SPACE).to(compute.device)
    optimizer = make_optimizer(net, TrainConfig())
    data = load_dataset(None, SPACE.image_size, SPACE.in_chans)
    for step in range(2):
        x, y = data.batch("train", list(range(16 * step, 16 * step + 16)))
        total, finite = sandwich_step(
            net, sandwich(SPACE, random.Random(step), 1), compute.move(x), compute.move(y), 0.5, 0.1, compute
        )
        assert bool(finite) and total.is_cuda
        optimizer_step(net, optimizer)
    assert 0.0 <= accuracy(net, SPACE.largest(), data, "val", compute=compute, limit=64) <= 1.0


@pytest.mark.gpu
@CUDA
def test_export_fine_tune_on_cuda():
    from nas.data import load_dataset
    from nas.exporter import finetune, top1

    compute = Compute.parse("cuda", "bf16")
    data = load_dataset(None, SPACE.image_size, SPACE.in_chans)
    model = extract(SuperNet(SPACE), SPACE.sample(random.Random(4)))
    finetune(model, data, 1, progress=lambda line: None, compute=compute)
    assert next(model.parameters()).is_cuda
    assert 0.0 <= top1(model, data, "val", compute) <= 1.0


@pytest.mark.parametrize("command", ["run", "latency", "export", "select"])
def test_the_old_device_flag_is_refused_naming_both_devices(command, capsys):
    from nas.cli import main

    with pytest.raises(SystemExit) as stop:
        main([command, "--device", "cuda"])
    error = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(error) == 1
    assert "--target-device" in error[0] and "--compute-device" in error[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_training_on_cuda_without_a_gpu_is_one_line_before_any_work(tmp_path, capsys):
    from nas.cli import main

    assert main(["train", "--compute-device", "cuda", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "CUDA is not available on this machine" in error[0]
    assert not (tmp_path / "run").exists()

"""Selection under budgets and standalone export: parity of every format, safe loading, errors."""

from __future__ import annotations

import csv
import json
import pickle
import random

import numpy as np
import pytest
import torch
from runs import make_run

import nas
from nas.cli import main
from nas.errors import NasError
from nas.exporter import export
from nas.report import TRIAL_COLUMNS
from nas.rundir import RunDir
from nas.selection import by_trial, load_candidates, select
from nas.space_file import load_space
from nas.supernet import extract


def write_trials(run_dir, rows):
    """A hand-made trials.csv: (number, state, accuracy, latency, arch)."""
    with (run_dir / "trials.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TRIAL_COLUMNS)
        writer.writeheader()
        for number, state, accuracy, latency, arch in rows:
            writer.writerow(
                {
                    "number": number,
                    "state": state,
                    "accuracy": accuracy,
                    "latency_ms": latency,
                    "feasible": True,
                    "macs": 1000 * (number + 1),
                    "params": 100 * (number + 1),
                    "digest": arch.digest,
                    "arch": json.dumps(arch.to_dict()),
                }
            )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = make_run(tmp_path_factory.mktemp("run"))
    space, _ = RunDir(run_dir).space_and_data()
    rng = random.Random(3)
    archs = [space.sample(rng) for _ in range(5)]
    write_trials(
        run_dir,
        [
            (0, "COMPLETE", 0.80, 0.50, archs[0]),
            (1, "COMPLETE", 0.90, 0.90, archs[1]),
            (2, "COMPLETE", 0.95, 1.50, archs[2]),
            (3, "FAIL", "", 0.40, archs[3]),
            (4, "COMPLETE", 0.90, 0.70, archs[4]),
        ],
    )
    return run_dir


def test_selection_returns_the_right_trial(run):
    candidates = load_candidates(run)
    assert [c.trial for c in candidates] == [0, 1, 2, 4]  # failed trials are not candidates
    assert select(candidates, 1.0)[0].trial == 4  # 0.90 at 0.70 beats 0.90 at 0.90 and 0.80
    assert [c.trial for c in select(candidates, 1.0, top=3)] == [4, 1, 0]
    assert select(candidates, 5.0)[0].trial == 2
    assert select(candidates, 0.5)[0].trial == 0


def test_infeasible_budget_names_the_fastest_latency(run, capsys):
    with pytest.raises(NasError, match=r"below every arch of this run: the fastest reached 0.5000 ms \(trial 0\)"):
        select(load_candidates(run), 0.3)
    assert main(["select", "--run", str(run), "--budget-ms", "0.3"]) == 2
    assert "the fastest reached 0.5000 ms" in capsys.readouterr().err


def test_select_cli_answers_several_budgets(run, capsys):
    assert main(["select", "--run", str(run), "--budget-ms", "0.6,1,2", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "budget 0.6 ms" in out and "budget 2.0 ms" in out and "#1 trial 2" in out


def test_run_from_another_device_is_refused_unless_named(run, tmp_path):
    table = json.loads((run / "latency_table.json").read_text())
    table["fingerprint"].update(device_type="cuda", device_name="Imaginary GPU Z9")
    other = tmp_path / "other"
    other.mkdir()
    for name in ("trials.csv", "config.yaml", "split.json", "supernet.safetensors"):
        (other / name).write_bytes((run / name).read_bytes())
    (other / "latency_table.json").write_text(json.dumps(table))
    with pytest.raises(
        NasError, match="measured on Imaginary GPU Z9 \\(cuda\\), not on this machine; pass --target-device"
    ):
        main_or_raise(["select", "--run", str(other), "--budget-ms", "1"])
    with pytest.raises(NasError, match="does not match the device"):
        main_or_raise(["select", "--run", str(other), "--budget-ms", "1", "--target-device", "cpu"])
    assert main(["select", "--run", str(other), "--budget-ms", "1", "--target-device", "Imaginary GPU Z9"]) == 0
    meta = export(
        other,
        by_trial(load_candidates(other), 1),
        tmp_path / "h100",
        formats=("safetensors",),
        device="Imaginary GPU Z9",
        progress=lambda line: None,
    )
    assert meta["latency"]["measured_ms"] is None and "not measured" in meta["latency"]["note"]


def main_or_raise(argv):
    """Run the CLI's command function directly so the NasError surfaces."""
    from nas.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "best"
    candidate = select(load_candidates(run), 1.0)[0]
    meta = export(run, candidate, out, progress=lambda line: None)
    return run, candidate, out, meta


def test_export_writes_every_file(exported):
    _, candidate, out, meta = exported
    assert sorted(p.name for p in out.iterdir()) == [
        "arch.json",
        "config.json",
        "metadata.json",
        "model.onnx",
        "model.pt",
        "model.safetensors",
    ]
    assert meta["arch_digest"] == candidate.arch.digest and meta["source"]["trial"] == candidate.trial
    assert meta["latency"]["predicted_ms"] > 0 and meta["latency"]["measured_ms"] > 0
    assert meta["macs"] > 0 and meta["params"] > 0 and meta["versions"]["torch"]


def test_exported_logits_equal_the_supernet(exported):
    run, candidate, out, _ = exported
    space, _ = RunDir(run).space_and_data()
    x = torch.randn(3, space.in_chans, space.image_size, space.image_size)
    with torch.no_grad():
        expected = RunDir(run).supernet(space)(x, candidate.arch)
        assert (nas.load(out).eval()(x) - expected).abs().max().item() <= 1e-5


def test_onnx_and_torchscript_equal_pytorch(exported):
    ort = pytest.importorskip("onnxruntime")
    _, _, out, _ = exported
    model = nas.load(out).eval()
    x = torch.randn(3, model.arch.in_chans, model.arch.image_size, model.arch.image_size)  # batch 3: dynamic axis
    with torch.no_grad():
        expected = model(x).numpy()
        scripted = torch.jit.load(str(out / "model.pt"))(x).numpy()
    onnx_out = ort.InferenceSession(str(out / "model.onnx")).run(None, {"images": x.numpy()})[0]
    assert np.abs(onnx_out - expected).max() <= 1e-4
    assert np.abs(scripted - expected).max() <= 1e-5


def test_load_and_timm_route_rebuild_the_same_model_without_pickle(exported, monkeypatch):
    import timm

    import nas.timm_compat  # noqa: F401  registers vit_nas

    _, _, out, _ = exported

    def refuse(*args, **kwargs):
        raise AssertionError("loading must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    ours = nas.load(out).eval()
    via_timm = timm.create_model(
        "vit_nas", arch=str(out / "arch.json"), checkpoint_path=str(out / "model.safetensors")
    ).eval()
    x = torch.randn(2, ours.arch.in_chans, ours.arch.image_size, ours.arch.image_size)
    with torch.no_grad():
        assert torch.equal(ours(x), via_timm(x))
    assert via_timm.arch == ours.arch


@pytest.mark.slow
@pytest.mark.compat
def test_an_export_loads_through_timms_own_paths_in_a_fresh_process(exported):
    """`import nas, timm`: vit_nas is registered, and timm's pretrained loading finds the export's weights through the
    overlay's `file` (and, where this timm has it, through `local-dir:` and the export's config.json)."""
    import json
    import subprocess
    import sys

    _, _, out, _ = exported
    code = f"""
import json, sys, torch
import nas, timm
ours = nas.load({str(out)!r}).eval()
x = torch.randn(2, ours.arch.in_chans, ours.arch.image_size, ours.arch.image_size)
model = timm.create_model("vit_nas", pretrained=True, pretrained_cfg_overlay=dict(file={str(out / "model.safetensors")!r})).eval()
with torch.no_grad():
    assert torch.equal(model(x), ours(x))
cfg = timm.data.resolve_data_config(model=model)
assert tuple(cfg["input_size"]) == (ours.arch.in_chans, ours.arch.image_size, ours.arch.image_size), cfg
try:
    local = timm.create_model("local-dir:" + {str(out)!r}, pretrained=True).eval()
except (ValueError, AssertionError):  # a timm without the local-dir: source (1.0.3 asserts on the scheme)
    from packaging.version import Version
    assert Version(timm.__version__) < Version("1.0.31"), "this timm reads local-dir: (it did on 1.0.31)"
    print("no local-dir")
else:
    with torch.no_grad():
        assert torch.equal(local(x), ours(x))
    print("local-dir")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vit_nas" and config["pretrained_cfg"]["num_classes"] == config["num_classes"]


def test_existing_export_directory_is_refused_unless_overwrite(exported):
    run, candidate, out, _ = exported
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(NasError, match="already exists; pass --overwrite"):
        export(run, candidate, out, progress=lambda line: None)
    assert sorted(p.name for p in out.iterdir()) == before
    export(run, candidate, out, formats=("safetensors",), overwrite=True, progress=lambda line: None)
    assert sorted(p.name for p in out.iterdir()) == ["arch.json", "config.json", "metadata.json", "model.safetensors"]


@pytest.mark.slow
def test_finetuning_never_exports_lower_validation_accuracy(run, tmp_path):
    candidate = select(load_candidates(run), 1.0)[0]
    meta = export(
        run, candidate, tmp_path / "tuned", formats=("safetensors",), finetune_epochs=2, progress=lambda line: None
    )
    accuracy = meta["accuracy"]
    assert accuracy["finetuned"] is not None
    if accuracy["finetuned"]["val"] >= accuracy["inherited"]["val"]:
        assert accuracy["exported_weights"] == "finetuned"
    else:  # reported honestly, and the better (inherited) weights are the ones exported
        assert accuracy["exported_weights"] == "inherited"
    space, _ = RunDir(run).space_and_data()
    inherited = extract(RunDir(run).supernet(space), candidate.arch).eval()
    exported_model = nas.load(tmp_path / "tuned").eval()
    from nas.data import load_dataset

    data = load_dataset(None, space.image_size, space.in_chans)
    assert data.top1(exported_model, "val") >= data.top1(inherited, "val")


def _kernel_groups(per_arch: int) -> list[tuple[str, ...]]:
    """The kernel choices of digits-tiny in groups of one arch's depth: every kernel in some arch, each arch one ONNX export."""
    labels = [spec.label for spec in load_space("digits-tiny").kernel_choices()]
    return [tuple(labels[i : i + per_arch]) for i in range(0, len(labels), per_arch)]


@pytest.mark.slow
@pytest.mark.compat
@pytest.mark.parametrize("labels", _kernel_groups(max(load_space("digits-tiny").depth)), ids="+".join)
def test_every_kernel_survives_extraction_onnx_and_torchscript(labels, tmp_path):
    """Archs whose layers cover every kernel (L²ViT's residual-stream LCM, FLatten's positional encoding, the window
    bias, Castling's sequence conv included), extracted from a perturbed supernet: ONNX and TorchScript equal it.
    Each arch holds up to depth-many kernels, one per layer (the rest of its layers softmax), so the 9 kernel choices
    take 3 exports instead of 9."""
    ort = pytest.importorskip("onnxruntime")
    from test_supernet import randomized

    from nas.exporter import to_onnx, to_torchscript
    from nas.supernet import SuperNet

    space = load_space("digits-tiny")
    specs = {spec.label: spec for spec in space.kernel_choices()}
    torch.manual_seed(0)
    net = randomized(SuperNet(space)).eval()
    widest = space.largest()
    layers = [
        space.make_layer(specs[labels[i]], layer.heads, layer.mlp_ratio) if i < len(labels) else layer
        for i, layer in enumerate(widest.layers)
    ]
    arch = space.validate(space.make_arch(widest.embed_dim, layers))
    assert [layer.kernel for layer in arch.layers[: len(labels)]] == [specs[label].name for label in labels]
    model = extract(net, arch).eval()
    x = torch.randn(3, space.in_chans, space.image_size, space.image_size)
    to_onnx(model, tmp_path / "model.onnx")
    to_torchscript(model, tmp_path / "model.pt")
    with torch.no_grad():
        expected = net(x, arch)
        assert (model(x) - expected).abs().max().item() <= 1e-5
        scripted = torch.jit.load(str(tmp_path / "model.pt"))(x)
    onnx_out = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"images": x.numpy()})[0]
    assert (scripted - expected).abs().max().item() <= 1e-5
    assert np.abs(onnx_out - expected.numpy()).max() <= 1e-5

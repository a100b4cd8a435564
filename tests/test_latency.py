"""Latency lookup table: round-trip, refusal of other devices, resumption, prediction, validation."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from nas.cli import main
from nas.errors import NasError
from nas.latency import table as lut
from nas.latency.build import build
from nas.latency.fingerprint import fingerprint
from nas.latency.probe import Protocol
from nas.latency.profiler import Profiler
from nas.latency.validation import calibrate, held_out_archs, kendall_tau, validate
from nas.space_file import parse_space

FAST = Protocol(warmup=1, repeats=3, min_repeats=2, max_seconds=0.01, passes=2)
TINY = {
    "name": "tiny",
    "image_size": 8,
    "patch_size": 4,
    "in_chans": 1,
    "num_classes": 3,
    "head_dim": 4,
    "embed_dim": [8, 16],
    "depth": [1, 2],
    "heads": [1, 2],
    "mlp_ratio": [1, 2],
    "kernels": ["softmax", "relu", "taylor"],
    "taylor": {"order": [1]},
}
SPACE = parse_space(TINY, "tiny.yaml")
CPU = torch.device("cpu")


def profiler() -> Profiler:
    return Profiler("cpu", "fp32", 2, protocol=FAST)


def built_table(path):
    p = profiler()
    return build(SPACE, p.fingerprint(), path, p.measure_probes, FAST, progress=lambda line: None)


def test_table_covers_the_space_and_round_trips(tmp_path):
    table = built_table(tmp_path / "t.json")
    blocks = len(SPACE.embed_dim) * len(SPACE.kernel_choices()) * len(SPACE.heads) * len(SPACE.mlp_ratio)
    assert len(table.entries) == blocks + 2 * len(SPACE.embed_dim)  # + stem and head per embed dim
    assert all(entry["ms"] > 0 and entry["passes"] >= 2 for entry in table.entries.values())
    again = lut.LatencyTable.load(tmp_path / "t.json", SPACE, table.fingerprint)
    assert again.to_dict() == json.loads(json.dumps(table.to_dict()))
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["fingerprint"]["device_type"] == "cpu" and data["protocol"]["repeats"] == 3


def test_table_from_another_device_or_setting_is_refused(tmp_path):
    table = built_table(tmp_path / "t.json")
    for change in (
        {"dtype": "bf16"},
        {"batch_size": 8},
        {"device_name": "NVIDIA H100 80GB HBM3", "device_type": "cuda"},
    ):
        other = dataclasses.replace(table.fingerprint, **change)
        with pytest.raises(NasError) as error:
            lut.LatencyTable.load(tmp_path / "t.json", SPACE, other)
        field = next(iter(change))
        assert "refused" in str(error.value) and f"{field}: " in str(error.value)


def test_table_for_a_changed_space_is_refused(tmp_path):
    built_table(tmp_path / "t.json")
    wider = parse_space({**TINY, "embed_dim": [8, 16, 24]}, "tiny.yaml")
    with pytest.raises(NasError, match="not for 'tiny' as it is now; rebuild it"):
        lut.LatencyTable.load(tmp_path / "t.json", wider)


def test_corrupt_table_is_a_clear_error(tmp_path):
    (tmp_path / "t.json").write_text('{"format": "nas-latency-table/1", "entries": ')
    with pytest.raises(NasError, match="not a valid latency table"):
        lut.LatencyTable.load(tmp_path / "t.json")


def test_partial_table_resumes_without_remeasuring(tmp_path):
    # The width-consistency pass (which may re-measure any entry, on purpose) is off here: this is about resumption.
    no_recheck = dataclasses.replace(FAST, monotone_tolerance=1e9)
    path = tmp_path / "t.json"
    p = Profiler("cpu", "fp32", 2, protocol=no_recheck)
    calls: list[str] = []

    def interrupted(chunk, provisional=False):
        if calls:
            raise KeyboardInterrupt
        calls.extend(key for key, _ in chunk)
        return p.measure_probes(chunk)

    with pytest.raises(KeyboardInterrupt):
        build(SPACE, p.fingerprint(), path, interrupted, no_recheck, progress=lambda line: None)
    first = set(calls)
    partial = lut.LatencyTable.load(path, SPACE, p.fingerprint())
    assert set(partial.entries) == first and len(first) == 8

    resumed: list[str] = []

    def counting(chunk, provisional=False):
        resumed.extend(key for key, _ in chunk)
        return p.measure_probes(chunk)

    table = build(SPACE, p.fingerprint(), path, counting, no_recheck, progress=lambda line: None)
    assert not first & set(resumed)
    assert {k: v for k, v in table.entries.items() if k in first} == partial.entries


def test_predict_is_the_sum_of_entries_plus_calibration(tmp_path):
    table = built_table(tmp_path / "t.json")
    arch = SPACE.sample(random.Random(4))
    expected = table.entries[f"stem|e{arch.embed_dim}"]["ms"] + table.entries[f"head|e{arch.embed_dim}"]["ms"]
    for layer in arch.layers:
        expected += table.entries[lut.block_key(arch.embed_dim, layer.kernel_spec.label, layer.heads, layer.mlp_ratio)][
            "ms"
        ]
    assert table.predict(arch) == pytest.approx(expected, rel=1e-12)
    archs = held_out_archs(SPACE, 4, seed=0, exclude=set())
    calibrate(table, archs, [2 * table.raw(a) + 0.5 for a in archs])
    assert table.calibration["a"] == pytest.approx(2) and table.calibration["b"] == pytest.approx(0.5)
    assert table.predict(arch) == pytest.approx(2 * expected + 0.5)


@pytest.mark.parametrize(
    "line, constrained", [((2.0, 0.5), False), ((-0.027, 3.0), True), ((4.40, -0.9), True), ((198.8, -57.3), True)]
)
def test_calibration_keeps_a_positive_slope_and_a_non_negative_floor(tmp_path, line, constrained):
    """Fits accepted before (issue 25): a = -0.027 (larger models faster), 4.40 x - 4.19 ms and
    198.8 x - 57.3 ms (the smallest arch below 0 ms). Such points are fitted through the origin."""
    table = built_table(tmp_path / "t.json")
    archs = held_out_archs(SPACE, 6, seed=0, exclude=set())
    raw = [table.raw(a) for a in archs]
    floor = min(raw)
    # intercepts in units of the smallest sum (of the largest, for a negative slope): all times > 0 whatever the table measured
    measured = [line[0] * x + line[1] * (floor if line[0] > 0 else max(raw)) for x in raw]
    assert min(measured) > 0
    calibrate(table, archs, measured)
    a, b = table.calibration["a"], table.calibration["b"]
    assert a > 0 and b >= 0 and table.calibration["constrained"] is constrained
    if not constrained:
        assert (a, b) == (pytest.approx(2.0), pytest.approx(0.5 * floor))
    else:
        assert a == pytest.approx(sum(x * y for x, y in zip(raw, measured)) / sum(x * x for x in raw)) and b == 0
    smallest, largest = SPACE.smallest(), SPACE.largest()
    # positive, and in the order of the table's sums (a measured table may, on a loaded machine, sum the smallest arch higher)
    assert 0 < table.predict(smallest) and 0 < table.predict(largest)
    assert (table.predict(largest) - table.predict(smallest)) * (table.raw(largest) - table.raw(smallest)) >= 0
    with pytest.raises(NasError, match="positive, finite"):
        calibrate(table, archs, [float("nan")] + measured[1:])


def test_validation_archs_are_disjoint_from_calibration(tmp_path):
    table = built_table(tmp_path / "t.json")
    calibration = held_out_archs(SPACE, 5, seed=0, exclude=set())
    calibrate(table, calibration, [table.raw(a) for a in calibration])
    held_out = held_out_archs(SPACE, 20, seed=1, exclude=set(table.calibration["archs"]))
    assert len(held_out) == 20 and not {a.digest for a in held_out} & set(table.calibration["archs"])
    with pytest.raises(NasError, match="must be held out from calibration"):
        validate(table, calibration[:2], [1.0, 1.0])
    result = validate(table, held_out, [table.predict(a) * 1.05 for a in held_out])
    assert (
        result["mape"] == pytest.approx(0.05 / 1.05)
        and result["within_10pct"] == 1.0
        and result["kendall_tau"] == pytest.approx(1.0)
    )


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def test_fingerprint_validates_its_inputs():
    with pytest.raises(NasError, match="--runtime cuda-graph needs a CUDA device"):
        fingerprint(CPU, "fp32", 1, "cuda-graph")
    with pytest.raises(NasError, match="--dtype 'fp64'"):
        fingerprint(CPU, "fp64", 1)


def test_the_kernel_path_follows_the_device_the_runtime_and_what_is_installed(monkeypatch):
    from nas.kernels import fused
    from nas.latency.runtime import resolve_kernels

    cuda = torch.device("cuda")
    assert resolve_kernels("auto", CPU, "eager") == "eager"
    assert resolve_kernels("eager", cuda, "cuda-graph") == "eager"
    monkeypatch.setattr(fused, "available", lambda device: None)  # Triton installed, on a device it runs on
    assert [resolve_kernels(k, cuda, r) for k in ("auto", "fused") for r in ("eager", "cuda-graph")] == ["fused"] * 4
    monkeypatch.setattr(fused, "available", lambda device: "Triton is not installed (pip install triton)")
    assert resolve_kernels("auto", cuda, "eager") == "eager"
    with pytest.raises(NasError, match="^--kernels fused: Triton is not installed .*use --kernels eager"):
        resolve_kernels("fused", cuda, "eager")
    with pytest.raises(NasError, match="^--kernels fused: --runtime onnxruntime times the ONNX graph"):
        resolve_kernels("fused", CPU, "onnxruntime")
    with pytest.raises(NasError, match="^--kernels 'triton': use one of auto, eager, fused"):
        resolve_kernels("triton", CPU, "eager")


def test_a_fingerprint_records_its_kernel_path_and_one_written_before_it_was_recorded_is_eager():
    fp = fingerprint(CPU, "fp32", 1)
    assert fp.kernels == "eager" and fp.to_dict()["kernels"] == "eager"
    older = {k: v for k, v in fp.to_dict().items() if k not in ("kernels", "runtime_version")}
    assert lut.Fingerprint.from_dict(older) == fp
    assert fp.differences(dataclasses.replace(fp, kernels="fused")) == ["kernels: 'eager' vs 'fused'"]


@pytest.mark.slow
def test_cli_builds_calibrates_and_validates(tmp_path, capsys):
    space_file = tmp_path / "tiny.yaml"
    space_file.write_text(json.dumps(TINY))  # JSON is YAML
    out = tmp_path / "table.json"
    assert (
        main(
            [
                "latency",
                "--space",
                str(space_file),
                "--calibrate",
                "3",
                "--validate",
                "5",
                "--accept-poor-fit",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "latency predictor: 5 held-out archs: MAPE" in printed and "calibration: measured" in printed
    data = json.loads(out.read_text())
    assert data["validation"]["archs"] == 5 and len(data["calibration"]["archs"]) == 3
    assert (
        main(
            [
                "bench",
                "latency",
                "--table",
                str(out),
                "--space",
                str(space_file),
                "--archs",
                "4",
                "--out",
                str(tmp_path / "bench"),
            ]
        )
        == 0
    )
    assert (tmp_path / "bench" / "latency_tiny_cpu_fp32_b1.png").exists()


@pytest.mark.slow
@pytest.mark.compat
def test_ray_profiler_actor_measures_on_its_node():
    ray = pytest.importorskip("ray")
    from workers.cluster import init_ray
    from workers.profiler import RemoteProfiler

    init_ray(None, num_cpus=1)  # our own local instance, whatever else runs on this machine
    try:
        remote = RemoteProfiler("cpu", "fp32", 1, threads=1, protocol=FAST)
        fp = remote.fingerprint()
        assert fp.device_type == "cpu" and fp.threads == 1
        probes = list(lut.probe_archs(SPACE))[:2]
        entries = remote.measure_probes(probes)
        assert set(entries) == {key for key, _ in probes}
        assert all(ms > 0 for ms in remote.measure_models([SPACE.largest()]))
    finally:
        ray.shutdown()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["eager", "cuda-graph"])
def test_table_builds_and_predicts_on_cuda(tmp_path, backend):
    p = Profiler("cuda", "bf16", 4, backend=backend, protocol=FAST)
    table = build(SPACE, p.fingerprint(), tmp_path / "t.json", p.measure_probes, FAST, progress=lambda line: None)
    assert table.fingerprint.device_type == "cuda" and table.fingerprint.threads is None
    arch = SPACE.sample(random.Random(0))
    assert table.predict(arch) > 0 and p.measure_models([arch])[0] > 0


def test_bench_outputs_of_an_eager_and_a_cuda_graph_table_do_not_overwrite_each_other():
    from dataclasses import replace

    from nas.bench.latency import output_stem

    gpu = replace(fingerprint(CPU, "fp32", 1), device_type="cuda", device_name="Imaginary GPU Z9", threads=None)
    eager = lut.LatencyTable("tiny", "d", gpu, {})
    graph = lut.LatencyTable("tiny", "d", replace(gpu, backend="cuda-graph"), {})
    assert output_stem(eager) == "latency_tiny_cuda-Imaginary-GPU-Z9_fp32_b1"
    assert output_stem(graph) == "latency_tiny_cuda-Imaginary-GPU-Z9_fp32_b1_cuda-graph"


def test_a_table_measured_with_an_earlier_kernel_operator_is_refused_by_name(tmp_path, monkeypatch):
    """A kernel's `revision` rises when its operator changes: tables measured before say which kernel changed."""
    from nas.kernels.window import WindowAttention

    space = parse_space(
        {**{k: v for k, v in TINY.items() if k != "taylor"}, "kernels": ["softmax", "window"]}, "tiny.yaml"
    )
    path = tmp_path / "t.json"
    table = lut.LatencyTable(
        space.name,
        lut.space_digest(space),
        Profiler("cpu", "fp32", 1).fingerprint(),
        {},
        kernel_revisions=lut.kernel_revisions(space),
    )
    table.save(path)
    assert (
        lut.LatencyTable.load(path, space).kernel_revisions
        == lut.kernel_revisions(space)
        == {"window": WindowAttention.revision}
    )
    monkeypatch.setattr(WindowAttention, "revision", WindowAttention.revision + 1)
    with pytest.raises(
        NasError,
        match=rf"earlier operator of kernel\(s\) window \(revision window {WindowAttention.revision - 1} vs "
        rf"{WindowAttention.revision} now\); rebuild it into a new file",
    ):
        lut.LatencyTable.load(path, space)

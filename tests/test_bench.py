"""`nas bench kernels` and `nas bench supernet` on tiny settings: outputs, crossovers, clear errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from nas import kernels
from nas.bench.kernels import BenchRow, crossovers, token_grid
from nas.cli import main


def test_tiny_sweep_writes_csv_json_png(tmp_path, capsys):
    code = main(
        [
            "bench",
            "kernels",
            "--tokens",
            "16,36,64",
            "--heads",
            "2",
            "--head-dim",
            "8",
            "--repeats",
            "3",
            "--max-seconds",
            "0.01",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "[3/3] N=64" in printed and "crossover" in printed
    rows = list(csv.DictReader((tmp_path / "kernels_cpu_fp32.csv").open()))
    labels = [spec.label for spec in kernels.variants()]
    assert len(rows) == len(labels) * 2 * 3
    assert {(r["kernel"], r["mode"], r["tokens"]) for r in rows} == {
        (label, mode, str(n)) for label in labels for mode in ("fwd", "fwd+bwd") for n in (16, 36, 64)
    }
    assert all(float(r["median_ms"]) > 0 and int(r["repeats"]) >= 3 for r in rows)
    assert all(float(r["speedup_vs_softmax"]) == 1.0 for r in rows if r["kernel"] == "softmax")
    meta = json.loads((tmp_path / "kernels_cpu_fp32.json").read_text())
    assert meta["machine"]["torch"] and meta["machine"]["threads"] >= 1
    assert set(meta["crossover_tokens"]) == set(labels) - {"softmax"}
    assert (tmp_path / "kernels_cpu_fp32.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "roofline at N=64" in printed and meta["peaks"]["flops_per_s"] > 0 and meta["peaks"]["bytes_per_s"] > 0
    assert all(
        float(r["gflop"]) > 0 and float(r["roofline_share"]) > 0 and r["bound"] in ("compute", "memory") for r in rows
    )
    softmax = {(r["mode"], r["tokens"]): r for r in rows if r["kernel"] == "softmax"}
    assert float(softmax[("fwd+bwd", "64")]["gflop"]) == pytest.approx(3 * float(softmax[("fwd", "64")]["gflop"]))


def test_roofline_work_and_share_on_known_figures():
    from nas.bench.roofline import Peaks, share, work

    module = {s.label: s for s in kernels.variants()}["softmax"].build(8, 2, grid=(4, 4), embed_dim=16)
    flops, moved = work(module, (4, 4), heads=2, head_dim=8, batch_size=3, mode="fwd", dtype=torch.float32)
    assert (
        flops == 2 * module.macs(2, (4, 4)) * 3 and moved == 4 * 3 * 2 * 16 * 8 * 4
    )  # q, k, v read, the output written
    assert work(module, (4, 4), 2, 8, 3, "fwd+bwd", torch.bfloat16) == (3 * flops, 8 * 3 * 2 * 16 * 8 * 2)
    peaks = Peaks(flops_per_s=1e12, bytes_per_s=1e10, matmul=1, copy_bytes=1)
    fit = share(10**9, 10**6, 2.0, peaks)  # compute roof 1 ms, memory roof 0.1 ms, measured 2 ms
    assert (
        fit["bound"] == "compute"
        and fit["roofline_share"] == pytest.approx(0.5)
        and fit["tflops"] == pytest.approx(0.5)
    )
    assert fit["intensity"] == 1000 and share(10**6, 10**8, 20.0, peaks)["bound"] == "memory"


def row(kernel, tokens, ms):
    return BenchRow(kernel, "fwd", tokens, token_grid(tokens), ms, ms, ms, 3)


def test_crossover_is_where_the_kernel_wins_from_then_on():
    softmax = [row("softmax", n, ms) for n, ms in ((64, 1), (256, 4), (1024, 16), (4096, 64))]
    wins_late = [row("a", n, ms) for n, ms in ((64, 2), (256, 3), (1024, 17), (4096, 20))]  # wins at 256, loses at 1024
    never = [row("b", n, ms) for n, ms in ((64, 2), (256, 8), (1024, 32), (4096, 65))]
    always = [row("c", n, 0.5) for n in (64, 256, 1024, 4096)]
    table = crossovers(softmax + wins_late + never + always)
    assert table == {"a": {"fwd": 4096}, "b": {"fwd": None}, "c": {"fwd": 64}}


def test_token_grid_is_most_square():
    assert (
        token_grid(64) == (8, 8) and token_grid(128) == (8, 16) and token_grid(15) == (3, 5) and token_grid(7) == (1, 7)
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kernels", "softmax,performer"], "unknown kernel label(s) performer; valid labels: softmax, relu"),
        (["--modes", "bwd"], "unknown mode(s) bwd"),
        (["--paths", "fast"], "unknown path(s) fast; valid paths: eager, compiled, fused"),
        (["--paths", "eager,fused"], "--paths fused on cpu: Triton runs on CUDA devices"),
        (["--device", "tpu"], "--device 'tpu'"),
    ],
)
def test_bad_arguments_give_one_clear_line(tmp_path, capsys, args, message):
    assert main(["bench", "kernels", "--tokens", "16", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_malformed_numbers_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "kernels", "--tokens", "0,64"])
    assert exit_info.value.code == 2
    assert "expected positive integers" in capsys.readouterr().err


def test_bench_supernet_reports_ratios(tmp_path, capsys):
    code = main(
        [
            "bench",
            "supernet",
            "--archs",
            "2",
            "--batch-size",
            "8",
            "--warmup",
            "1",
            "--repeats",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert "median ratio supernet / standalone" in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "supernet_digits-tiny_cpu.csv").open()))
    assert len(rows) == 2 and all(float(r["ratio"]) > 0 for r in rows)
    assert json.loads((tmp_path / "supernet_digits-tiny_cpu.json").read_text())["median_ratio"] > 0


@pytest.mark.slow
def test_bench_train_reports_throughput_and_peak_memory_of_every_case(tmp_path, capsys):
    """Tiny settings; the figures themselves belong to results/bench, not to a test."""
    code = main(
        [
            "bench",
            "train",
            "--batch-size",
            "8",
            "--steps",
            "2",
            "--images",
            "40",
            "--memory-sizes",
            "40,80",
            "--compute-device",
            "cpu",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "train_cpu_fp32.json").read_text())
    cases = {(r["data"].split(":")[0], r["loader_workers"], r["preloaded"]) for r in result["throughput"]}
    assert cases == {
        ("digits", 0, False),
        ("imagefolder", 0, False),
        ("imagefolder", 2, False),
        ("imagefolder", 0, True),
        ("imagefolder", 2, True),
    }
    assert all(
        r["train_images_per_s"] > 0 and r["eval_images_per_s"] > 0 and r["rss_peak_mb"] > 0
        for r in result["throughput"]
    )
    assert [m["train_images"] for m in result["memory"]] == [40, 80] and all(
        m["rss_peak_mb"] > 0 for m in result["memory"]
    )
    assert set(result["streamed_vs_preloaded"]) == {"0 workers", "2 workers"} and "memory_growth" in result
    assert "peak RSS growth" in capsys.readouterr().out
    own = [
        "bench",
        "train",
        "--space",
        str(tmp_path / "work" / "bench-224.yaml"),
        "--data",
        str(tmp_path / "work" / "images-40"),
        "--batch-size",
        "8",
        "--steps",
        "1",
        "--loader-workers",
        "0",
        "--compute-device",
        "cpu",
        "--out",
        str(tmp_path),
    ]
    assert main(own) == 0
    alone = json.loads((tmp_path / "train_cpu_fp32_bench-224_b8.json").read_text())
    assert [(r["loader_workers"], r["preloaded"]) for r in alone["throughput"]] == [
        (0, False)
    ] and "memory" not in alone


@pytest.mark.parametrize(
    "argv0, expected",
    [
        ("/usr/bin/nas", "nas bench latency --table t.json"),
        ("/repo/nas/cli.py", "nas bench latency --table t.json"),  # python -m nas.cli
        ("/usr/bin/pytest", None),
    ],
)
def test_result_files_record_the_command_as_typed(monkeypatch, argv0, expected):
    from nas.commands.common import command_line

    monkeypatch.setattr("sys.argv", [argv0, "bench", "latency", "--table", "t.json"])
    assert command_line() == expected


@pytest.mark.slow
def test_bench_zoo_trains_every_kernel_and_variant_and_writes_its_table(tmp_path, capsys):
    """Every kernel choice of the space, the option variants and the Castling +aux rows, each with accuracy,
    MACs, params and a layer latency per token count."""
    from nas.bench.zoo import OPTION_VARIANTS
    from nas.space_file import load_space

    code = main(
        [
            "bench",
            "zoo",
            "--epochs",
            "1",
            "--batch-size",
            "256",
            "--seeds",
            "1",
            "--tokens",
            "16",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "zoo_digits-tiny.json").read_text())
    names = [row["kernel"] for row in data["rows"]]
    labels = [spec.label for spec in load_space("digits-tiny").kernel_choices()]
    assert set(labels) | {name for name, _, _ in OPTION_VARIANTS} | {"angular+aux", "angular-paper+aux"} == set(names)
    for row in data["rows"]:
        assert 0 <= row["accuracy"] <= 1 and row["macs"] > 0 and row["params"] > 0 and row["layer_ms"]["16"] > 0
        assert row["aux"] == row["kernel"].endswith("+aux")
    by_name = {row["kernel"]: row for row in data["rows"]}
    assert by_name["l2vit"]["params"] > by_name["relu"]["params"]  # its LCM on the residual stream is part of the arch
    assert by_name["window"]["params"] > by_name["window-plain"]["params"]  # the relative position bias
    assert (
        by_name["taylor-o2-compact"]["params"] > by_name["taylor-o2-compact-plain"]["params"]
    )  # QT-ViT's P and shortcut
    assert by_name["l2vit"]["params"] > by_name["l2vit-no-cpe"]["params"]  # the CPE's conv
    assert "softmax" in capsys.readouterr().out
    assert all(
        0.02 < d["l2vit_lcm_norm"] < 0.5 for d in data["deviations"].values()
    )  # BatchNorm vs ImageNorm in the LCM: a real difference
    assert all(
        0.02 < d["taylor_compact_shortcut_norm"] < 0.5 for d in data["deviations"].values()
    )  # BatchNorm vs ImageNorm in QT-ViT's shortcut
    assert main(["bench", "zoo", "--tokens", "200", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("label", [spec.label for spec in kernels.variants()])
def test_every_kernel_compiles_as_one_graph_and_equals_its_eager_path(label):
    """Issue 27: `torch.compile(fullgraph=True)` (a graph break is an error) on a non-square grid with
    fewer heads than built; forward and gradients equal to the eager path's within 1e-5."""
    import torch

    from nas.bench.kernels import kernel_call

    spec = {s.label: s for s in kernels.variants()}[label]
    grid, heads = (3, 5), 2
    torch.manual_seed(0)
    module = spec.build(8, 3, grid=grid, embed_dim=3 * 8)
    for p in module.parameters():  # away from the initial zeros/ones, so that every parameter matters
        p.data.add_(0.1 * torch.randn_like(p))
    q, k, v = (torch.randn(2, heads, 15, 8, requires_grad=True) for _ in range(3))
    params = list(module.parameters())
    results = []
    for path in ("eager", "compiled"):
        outputs = kernel_call(module, grid, path)(q, k, v)
        grads = torch.autograd.grad(sum((o * o).sum() for o in outputs), [q, k, v, *params])
        results.append((outputs, grads))
    (eager_out, eager_grads), (compiled_out, compiled_grads) = results
    for a, b in zip(eager_out + list(eager_grads), compiled_out + list(compiled_grads)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (label, (a - b).abs().max().item())


@pytest.mark.slow  # compiles two kernels
@pytest.mark.compat
def test_sweep_with_the_compiled_path(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "kernels",
                "--tokens",
                "16",
                "--heads",
                "2",
                "--head-dim",
                "8",
                "--kernels",
                "softmax,relu",
                "--modes",
                "fwd",
                "--paths",
                "eager,compiled",
                "--repeats",
                "3",
                "--max-seconds",
                "0.01",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((tmp_path / "kernels_cpu_fp32.csv").open()))
    assert {(r["kernel"], r["path"]) for r in rows} == {
        (k, p) for k in ("softmax", "relu") for p in ("eager", "compiled")
    }
    assert all(float(r["speedup_vs_eager"]) == 1.0 for r in rows if r["path"] == "eager")
    assert set(json.loads((tmp_path / "kernels_cpu_fp32.json").read_text())["crossover_tokens"]) == {
        "relu",
        "relu (compiled)",
    }
    assert "median latency, fwd, compiled" in capsys.readouterr().out


def test_paths_are_timed_in_turn_and_a_compiled_call_is_compiled_before_its_warm_up(monkeypatch):
    """A shared machine's speed drifts over seconds: the eager/compiled ratio must come from interleaved rounds,
    and the warm-up (which sizes the timed repeats) must time calls, not the compilation."""
    from nas.bench import kernels as bench

    events = []

    def fake_step(module, grid, mode, path):
        def call(*args):
            events.append(("call", path))

        call.path = path
        return call

    def fake_measure_times(call, inputs, **settings):
        events.append(("timed", call.path, settings["max_seconds"], settings["repeats"]))
        return [1.0]

    monkeypatch.setattr(bench, "_step", fake_step)
    monkeypatch.setattr(bench, "measure_times", fake_measure_times)
    config = bench.KernelBenchConfig(paths=("eager", "compiled"), repeats=30, max_seconds=0.6)
    times = bench._interleaved(None, (4, 4), "fwd", config, [()], torch.device("cpu"))
    assert events[0] == ("call", "compiled")  # compiled once before any timing
    timed = [event[1] for event in events[1:]]
    assert timed == ["eager", "compiled"] * bench.ROUNDS
    assert all(event[2] == pytest.approx(0.6 / bench.ROUNDS) and event[3] == 10 for event in events[1:])
    assert times == {"eager": [1.0] * bench.ROUNDS, "compiled": [1.0] * bench.ROUNDS}

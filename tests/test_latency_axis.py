"""The latency axis: a trial's latency is its whole model measured (next to a neighbour, measured
again), the table is only the prior and pre-filter, the exported pick meets its budget."""

from __future__ import annotations

import random

import optuna
import pytest

from nas import study as search
from nas import study_trials
from nas.errors import NasError
from nas.latency import profiler as profiler_module
from nas.latency.probe import Protocol
from nas.latency.profiler import Profiler
from nas.latency.trials import MIN_MARGIN, TrialLatency
from nas.selection import Candidate, pick_within_budget
from nas.space_file import load_space

SPACE = load_space("digits-tiny")
PROTOCOL = Protocol(warmup=1, repeats=3, min_repeats=2, max_seconds=0.01, passes=3, remeasure=2, drift_threshold=0.15)


class PriorTable:
    """A table whose prediction is a fixed function of the arch (a prior that is off by `bias`)."""

    def __init__(self, bias: float = 1.0, validation: dict | None = None) -> None:
        self.bias, self.validation = bias, validation

    def predict(self, arch) -> float:
        return self.bias * true_ms(arch)


def true_ms(arch) -> float:
    """The 'device' latency of an arch in these tests: grows with depth, width and heads."""
    return 0.1 * arch.depth + 0.002 * arch.embed_dim + 0.01 * sum(layer.heads for layer in arch.layers)


def archs(count: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return list({a.digest: a for a in (SPACE.sample(rng) for _ in range(count * 4))}.values())[:count]


def test_a_neighbour_during_a_trials_measurement_leads_to_a_re_measurement_and_the_quiet_figure(monkeypatch):
    """The neighbour starts as the first model is timed and stops after the reference has seen it:
    the chunk is measured again and the recorded latency is within 2 % of the unslowed one."""
    neighbour = {"on": False, "slow_references": 0}
    calls = []

    def fake_model_unit(arch, device, fp, protocol):
        def unit() -> float:
            calls.append(arch.digest)
            neighbour["on"] = neighbour["on"] or len(calls) == 1  # starts with the very first timed pass
            return true_ms(arch) * (3.0 if neighbour["on"] else 1.0 + 0.002 * (len(calls) % 3))

        return unit

    def fake_reference(self) -> float:
        if neighbour["on"]:
            neighbour["slow_references"] += 1
            if neighbour["slow_references"] >= 2:
                neighbour["on"] = False  # gone once the reference has been timed slow after the chunk
            return 3.0
        return 1.0

    monkeypatch.setattr(profiler_module, "model_unit", fake_model_unit)
    monkeypatch.setattr(Profiler, "reference", fake_reference)
    profiler = Profiler("cpu", "fp32", 1, protocol=PROTOCOL)
    batch = archs(3)
    measured = profiler.measure_models(batch)
    assert len(calls) > len(batch) * PROTOCOL.passes, "the slowed chunk was measured again"
    for arch, ms in zip(batch, measured):
        assert ms == pytest.approx(true_ms(arch), rel=0.02)

    # the same through a search: the study records the quiet figure as the trial's latency
    neighbour.update(on=False, slow_references=0)
    calls.clear()
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    config = search.SearchConfig(trials=4, batch=4, sampler="random")
    search.run_search(
        study,
        SPACE,
        PriorTable(),
        lambda a: [{"accuracy": 0.5, "macs": 1, "params": 1}] * len(a),
        config,
        progress=lambda line: None,
        measure=profiler.measure_models,
    )
    for trial in study.trials:
        arch = study_trials.arch_of(trial, SPACE)
        assert trial.user_attrs["latency_source"] == "measured"
        assert trial.values[1] == trial.user_attrs["measured_ms"] == pytest.approx(true_ms(arch), rel=0.02)


def test_the_prior_skips_an_arch_it_puts_over_the_budget_and_the_measurement_decides_the_rest():
    measured, scored = [], []
    table = PriorTable(bias=1.0)

    def measure(batch):
        measured.extend(a.digest for a in batch)
        return [true_ms(a) for a in batch]

    def evaluate(batch):
        scored.extend(a.digest for a in batch)
        return [{"accuracy": 0.5, "macs": 1, "params": 1}] * len(batch)

    latencies = sorted(true_ms(a) for a in archs(40, seed=3))
    budget = latencies[len(latencies) // 2]
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3))
    judge = search.run_search(
        study,
        SPACE,
        table,
        evaluate,
        search.SearchConfig(trials=24, batch=4, sampler="random", budget_ms=budget),
        progress=lambda line: None,
        measure=measure,
    )
    assert judge.prefiltered > 0
    for trial in study.trials:
        digest, attrs = trial.user_attrs["digest"], trial.user_attrs
        predicted = attrs["predicted_ms"]
        if predicted > budget * (1 + MIN_MARGIN):  # the prior's error is 0 here: the floor margin applies
            assert trial.state == optuna.trial.TrialState.PRUNED and digest not in measured and digest not in scored
            assert "not measured, not scored" in attrs["skipped"] and attrs["latency_source"] == "predicted"
            assert trial.constraints["latency"] > 0
        elif attrs["measured_ms"] > budget:
            assert trial.state == optuna.trial.TrialState.PRUNED and digest in measured and digest not in scored
            assert "measured" in attrs["skipped"] and trial.constraints["latency"] > 0
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE and digest in scored
            assert trial.values[1] == attrs["measured_ms"] and trial.constraints["latency"] <= 0
    assert len(measured) == len(set(measured)), "each arch is measured once"


def test_the_pre_filter_margin_is_the_priors_measured_error():
    points = [{"predicted_ms": 1.0, "measured_ms": m} for m in (1.0, 0.9, 1.1, 0.8, 1.25)]
    judge = TrialLatency(PriorTable(validation={"points": points}), measure=lambda a: [1.0] * len(a), budget_ms=1.0)
    errors = sorted(abs(1.0 - m) / m for m in (1.0, 0.9, 1.1, 0.8, 1.25))
    assert errors[-2] < judge.margin() <= errors[-1]
    assert TrialLatency(PriorTable(validation={"points": [points[0]]})).margin() == MIN_MARGIN


def test_a_resumed_search_does_not_measure_an_arch_again():
    measured = []

    def measure(batch):
        measured.extend(a.digest for a in batch)
        return [true_ms(a) for a in batch]

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=5))
    evaluate = lambda batch: [{"accuracy": 0.5, "macs": 1, "params": 1}] * len(batch)  # noqa: E731
    search.run_search(
        study,
        SPACE,
        PriorTable(),
        evaluate,
        search.SearchConfig(trials=4, batch=2, sampler="random"),
        lambda line: None,
        measure,
    )
    first = list(measured)
    for trial in study.trials[:2]:  # the same archs asked again in the extended study
        study.enqueue_trial(trial.params)
    search.run_search(
        study,
        SPACE,
        PriorTable(),
        evaluate,
        search.SearchConfig(trials=6, batch=2, sampler="random"),
        lambda line: None,
        measure,
    )
    assert measured == first, "archs the study had measured are not measured again"


def candidates(accuracies_and_ms):
    pool = archs(len(accuracies_and_ms), seed=7)
    return [Candidate(i, acc, ms, 1, 1, pool[i]) for i, (acc, ms) in enumerate(accuracies_and_ms)]


def test_the_pick_falls_back_to_the_next_candidate_that_measures_within_the_budget():
    pool = candidates([(0.9, 0.95), (0.8, 0.7), (0.85, 0.9), (0.7, 0.5)])
    now = {pool[0].arch.digest: 1.2, pool[2].arch.digest: 1.05, pool[1].arch.digest: 0.72, pool[3].arch.digest: 0.5}
    lines = []
    chosen, ms, checked = pick_within_budget(
        pool, lambda batch: [now[a.digest] for a in batch], 1.0, progress=lines.append
    )
    assert chosen.trial == 1 and ms == 0.72  # the most accurate two measure over the budget now
    assert (
        [c["trial"] for c in checked[:3]] == [0, 2, 1]
        and checked[0]["measured_ms"] == 1.2
        and checked[0]["search_ms"] == 0.95
    )
    assert len(lines) == 1 and "exporting trial 1 instead" in lines[0]

    with pytest.raises(NasError, match="no candidate measured within the budget 0.4 ms"):
        pick_within_budget(pool, lambda batch: [now[a.digest] for a in batch], 0.4, progress=lines.append)


def test_the_budget_refusal_allows_the_priors_error(tmp_path):
    from test_latency import SPACE as space
    from test_latency import built_table

    from nas.budget import resolve_budget
    from nas.feasibility import smallest_latency

    table = built_table(tmp_path / "t.json")
    floor = smallest_latency(space, table)
    margin = TrialLatency(table).margin()
    assert (
        resolve_budget(space, table, floor * (1 + margin / 2) / (1 + margin)) > 0
    )  # within the prior's error of its floor
    with pytest.raises(NasError, match="by more than the table's error"):
        resolve_budget(space, table, floor / (1 + margin) * 0.9)


# ---- runtimes ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_model_timed_in_onnxruntime_computes_what_eager_pytorch_computes():
    pytest.importorskip("onnxruntime")
    import torch
    from test_latency import SPACE as tiny

    from nas.latency.runtime import onnxruntime_callable
    from nas.subnet import ViT

    torch.manual_seed(0)
    for arch in archs_of(tiny, 3):
        model = ViT(arch).eval()
        x = torch.randn(1, arch.in_chans, arch.image_size, arch.image_size)
        run = onnxruntime_callable(model, model, x, threads=1)  # the graph nas export writes, in an ORT session
        with torch.no_grad():
            expected = model(x).numpy()
        assert abs(run(x)[0] - expected).max() <= 1e-5


def archs_of(space, count: int) -> list:
    rng = random.Random(11)
    return [space.sample(rng) for _ in range(count)]


@pytest.mark.slow
def test_onnxruntime_measurements_carry_the_runtime_in_the_fingerprint_and_a_mismatch_is_refused(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import dataclasses

    from test_latency import FAST, built_table
    from test_latency import SPACE as tiny

    from nas.latency import table as lut

    profiler = Profiler("cpu", "fp32", 1, "onnxruntime", 1, protocol=FAST)
    fp = profiler.fingerprint()
    assert fp.backend == "onnxruntime" and fp.runtime_version == f"onnxruntime {ort.__version__}"
    assert all(ms > 0 for ms in profiler.measure_models(archs_of(tiny, 2)))
    table = built_table(tmp_path / "eager.json")  # measured in eager PyTorch
    with pytest.raises(NasError) as error:
        lut.LatencyTable.load(
            tmp_path / "eager.json",
            tiny,
            dataclasses.replace(table.fingerprint, backend="onnxruntime", runtime_version=fp.runtime_version),
        )
    assert "refused" in str(error.value) and "backend: 'eager' vs requested 'onnxruntime'" in str(error.value)


@pytest.mark.parametrize(
    "runtime, words",
    [
        ("compile", "torch.compile is not a latency runtime yet"),
        ("tensorrt", "TensorRT is not"),
        ("tvm", "use one of eager, cuda-graph, onnxruntime"),
    ],
)
def test_a_runtime_that_is_not_built_is_refused_in_one_line(runtime, words, tmp_path, capsys):
    from nas.cli import main

    assert main(["latency", "--space", "digits-tiny", "--runtime", runtime, "--out", str(tmp_path / "t.json")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and words in error[0] and not (tmp_path / "t.json").exists()


def test_a_resumed_run_with_another_runtime_is_refused():
    from nas.resume import resume_changes

    with pytest.raises(NasError, match="--runtime was 'eager', now 'onnxruntime'"):
        resume_changes(
            {"runtime": "eager", "space": "odd-one-out"},
            {"runtime": "onnxruntime", "space": "odd-one-out"},
            trained=True,
        )


def test_figures_are_expressed_at_the_tables_speed_when_the_whole_machine_slows_down(monkeypatch):
    """A host that runs 25 % slower for good (another VM, a lower clock) slows the reference
    as much as the models: anchored to the table's reference time, the figures stay the table's."""
    machine = {"speed": 1.0}

    def fake_model_unit(arch, device, fp, protocol):
        return lambda: true_ms(arch) * machine["speed"]

    monkeypatch.setattr(profiler_module, "model_unit", fake_model_unit)
    monkeypatch.setattr(Profiler, "reference", lambda self: 0.2 * machine["speed"])
    batch = archs(4)
    profiler = Profiler("cpu", "fp32", 1, protocol=PROTOCOL)
    profiler.anchor_to(0.2)  # the table was measured at speed 1
    assert profiler.measure_models(batch) == pytest.approx([true_ms(a) for a in batch], rel=1e-6)
    machine["speed"] = 1.25  # the search's (or the export's) profiler on a host slower for good
    slower = Profiler("cpu", "fp32", 1, protocol=PROTOCOL)
    slower.anchor_to(0.2)
    assert slower.measure_models(batch) == pytest.approx([true_ms(a) for a in batch], rel=1e-6)
    assert slower.speeds[-1] == pytest.approx(1.25)
    unanchored = Profiler("cpu", "fp32", 1, protocol=PROTOCOL)
    assert unanchored.measure_models(batch) == pytest.approx([1.25 * true_ms(a) for a in batch], rel=1e-6)


@pytest.mark.parametrize("reference_slowdown", [1.4, 200.0])
def test_interference_that_slows_the_reference_more_than_the_models_never_shrinks_a_figure(
    monkeypatch, reference_slowdown
):
    """Under oversubscription the tiny reference block ran 200x slower while models ran a few times
    slower (measured on 2 cores, 2026-12-06): the figures must not be divided by that slowdown. A
    profiler that saw the machine quiet once corrects by that quiet speed only; one that never did
    corrects by at most MAX_SPEED_RATIO (1.5) and leaves a larger slowdown as measured."""
    busy = {"on": False}

    def fake_model_unit(arch, device, fp, protocol):
        return lambda: true_ms(arch) * (3.0 if busy["on"] else 1.0)

    monkeypatch.setattr(profiler_module, "model_unit", fake_model_unit)
    monkeypatch.setattr(Profiler, "reference", lambda self: 0.2 * (reference_slowdown if busy["on"] else 1.0))
    batch = archs(4)
    quiet_once = Profiler("cpu", "fp32", 1, protocol=PROTOCOL)
    quiet_once.anchor_to(0.2)
    quiet_once.measure_models(batch)
    busy["on"] = True
    figures = quiet_once.measure_models(batch)
    assert all(ms >= true_ms(a) * (1 - 1e-6) for ms, a in zip(figures, batch))
    never_quiet = Profiler("cpu", "fp32", 1, protocol=PROTOCOL)
    never_quiet.anchor_to(0.2)
    figures = never_quiet.measure_models(batch)
    assert all(ms >= true_ms(a) * (1 - 1e-6) for ms, a in zip(figures, batch))


def test_a_table_records_the_reference_time_it_was_measured_at(tmp_path):
    import json

    from test_latency import FAST
    from test_latency import SPACE as tiny

    from nas.latency import table as lut
    from nas.latency.build import build

    p = Profiler("cpu", "fp32", 1, protocol=FAST)
    table = build(
        tiny,
        p.fingerprint(),
        tmp_path / "t.json",
        p.measure_probes,
        FAST,
        progress=lambda line: None,
        reference=p.reference,
    )
    stored = json.loads((tmp_path / "t.json").read_text())["reference_ms"]
    assert stored is not None and stored > 0 and stored == table.reference_ms
    assert lut.LatencyTable.load(tmp_path / "t.json", tiny).reference_ms == stored

"""Multi-objective Optuna search over a trained supernet, under a latency budget.

Objectives: maximise top-1 accuracy (inherited supernet weights, validation split) and
minimise latency — the whole model measured on the target device (`measure`, see
nas.latency.trials; the lookup table is the prior and pre-filter), or the table's
prediction where nothing measures; optionally minimise params or MACs too. The latency
budget is a constraint set on every trial, failed ones included (`trial.set_constraint`,
latency − budget ≤ 0 is feasible). Latency comes first: an arch over the budget (measured,
or predicted over it by more than the prior's error) is not scored; its trial is told
PRUNED with its latency and constraint, so that the samplers learn the boundary. The loop
only asks and tells: it asks a batch of trials, judges their latency, hands the archs
within the budget to `evaluate` (a pool of Ray evaluator actors, or a plain function),
and tells the results. Where no latency is measured on this machine (the table decides), the
loop is asynchronous instead, given a pool with `start`/`wait` (workers.evaluator): each
evaluator that finishes has its trial told and gets the next trial at once, so none waits for
a batch's slowest arch. Measured latencies keep the batches: each batch's models are measured
while no evaluation runs, since an evaluation beside them would slow the device they time.
A trial whose evaluation fails or yields NaN is told FAILED, never dropped.

Each arch is evaluated at most once per study: a trial whose arch already has a finished
result (an earlier trial, or another trial of the same batch) reuses it (`reused_from`).
A resumed or extended study continues the sampler's sequence (`continued_seed`).

Resumption: trials left RUNNING by a killed process are marked FAILED with
`interrupted=True` and their parameters re-enqueued, so nothing finished is lost or
re-run and the study completes to the requested number of trials.

This module opens the study (objectives, samplers) and runs the batch loop; the asynchronous loop
is nas.study_async, the steps both loops share (parameters <-> arch, ask, constrain, tell, counting
and interrupted trials) nas.study_trials, and the trials against the budget (feasibility, counts,
the Pareto front) nas.feasibility.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna

from nas import interrupts
from nas.arch import Arch
from nas.errors import NasError
from nas.feasibility import best_feasible
from nas.latency.table import LatencyTable
from nas.latency.trials import TrialLatency
from nas.progress import Bar
from nas.space import SearchSpace
from nas.storage import check as check_storage
from nas.storage import normalize, redact, study_not_found
from nas.study_async import run_async
from nas.study_trials import ask, busy_line, constrain, counted, recover_interrupted, tell

SAMPLERS = ("nsga2", "tpe", "random", "gp")
THIRD_OBJECTIVES = ("params", "macs")


@dataclass(frozen=True)
class SearchConfig:
    trials: int = 100
    batch: int = 4
    sampler: str = "tpe"
    seed: int = 0
    budget_ms: float | None = None
    third_objective: str | None = None


# ---- study -----------------------------------------------------------------------------------


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if name == "tpe":
        with warnings.catch_warnings():  # multivariate/group are marked experimental; we want them (conditional params)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=10)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":  # Gaussian-process Bayesian optimisation (multi-objective, with the latency constraint)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10)
    raise NasError(f"--sampler {name!r}: use one of {', '.join(SAMPLERS)}")


def open_study(storage: str, config: SearchConfig, resume: bool, study_name: str) -> optuna.Study:
    """Study `study_name` of `storage`, created (refused if it exists) or continued with `resume`
    (refused if it does not); other studies in the storage are left alone."""
    directions = ["maximize", "minimize"] + (["minimize"] if config.third_objective else [])
    names = check_storage(storage)
    storage = normalize(storage)
    if study_name in names and not resume:
        raise NasError(
            f"{redact(storage)} already holds a study named {study_name!r}; pass --resume to continue it, or another "
            f"--study-name (or --out/--storage)"
        )
    if study_name not in names and resume:
        raise NasError(f"--resume: {study_not_found(storage, study_name, names)}")
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=directions,
        sampler=make_sampler(config.sampler, config.seed),
        load_if_exists=True,
    )
    if list(study.directions) != [
        optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
        for d in directions
    ]:
        raise NasError("--resume: the study was started with other objectives (--third-objective must match)")
    told = len(study.get_trials(deepcopy=False))
    if told:  # a resumed or extended study continues the sampler's sequence instead of replaying it
        study.sampler = make_sampler(config.sampler, continued_seed(config.seed, told))
    with warnings.catch_warnings():  # experimental in Optuna 5; optuna-dashboard then shows "accuracy" and "latency_ms"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metric_names(config))
    return study


def continued_seed(seed: int, told: int) -> int:
    """The sampler seed of a study that already holds `told` trials: a function of both, so a
    resumed study neither replays the first trials nor depends on how often it was resumed at the same point."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{told}".encode()).digest()[:4], "little")


def open_study_in_memory(config: SearchConfig) -> optuna.Study:
    """A throw-away study (benchmarks), same objectives and sampler as `open_study`."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "minimize"] + (["minimize"] if config.third_objective else [])
    return optuna.create_study(directions=directions, sampler=make_sampler(config.sampler, config.seed))


def metric_names(config: SearchConfig) -> list[str]:
    return ["accuracy", "latency_ms"] + ([config.third_objective] if config.third_objective else [])


Evaluation = dict  # {"accuracy": float, "macs": int, "params": int}


def trial_latency(study: optuna.Study, table: LatencyTable, measure, budget_ms: float | None) -> TrialLatency:
    """The judge of this search's latencies, knowing every measurement the study already holds."""
    latency = TrialLatency(table, measure, budget_ms)
    if measure is not None:
        for t in study.get_trials(deepcopy=False):
            if "measured_ms" in t.user_attrs and "digest" in t.user_attrs:
                latency.remember(
                    t.user_attrs["digest"],
                    t.user_attrs.get("predicted_ms", t.user_attrs["measured_ms"]),
                    t.user_attrs["measured_ms"],
                )
    return latency


def run_search(
    study: optuna.Study,
    space: SearchSpace,
    table: LatencyTable,
    evaluate: Callable[[list[Arch]], Sequence[Evaluation | BaseException]],
    config: SearchConfig,
    progress: Callable[[str], None] = print,
    measure: Callable[[list[Arch]], list[float]] | None = None,
    evaluators: int | None = None,
    pool=None,
) -> TrialLatency:
    """Ask/tell until `config.trials` trials have finished (COMPLETE, PRUNED or FAILED).
    `measure(archs) -> ms each`: the whole models' latencies on the target device (a
    profiler's `measure_models`); None: the table's predictions decide. `evaluators`: how many
    evaluate in parallel; with it, the last line states how busy they were (from the evaluations'
    own `seconds`, kept as each trial's `eval_seconds`). `pool`: an evaluator pool with
    `start`/`wait`; with it and no `measure`, the loop is asynchronous (`evaluate` unused).
    Returns the judge (its figures)."""
    latency = trial_latency(study, table, measure, config.budget_ms)
    if pool is not None and measure is None and hasattr(pool, "start"):
        return run_async(study, space, latency, pool, config, progress, evaluators or len(pool.actors))
    started = time.perf_counter()
    busy = 0.0
    with interrupts.deferred():
        at_start = sum(counted(t) for t in study.get_trials(deepcopy=False))
    with Bar(config.trials, "search", unit="trial", initial=min(at_start, config.trials)) as bar:
        while True:
            with interrupts.deferred():
                trials = study.get_trials(deepcopy=False)
            done = sum(counted(t) for t in trials)
            bar.update(max(0, min(done, config.trials) - at_start))
            at_start = max(at_start, min(done, config.trials))
            if done >= config.trials:
                progress(latency.summary())
                if evaluators:
                    progress(busy_line(busy, evaluators, time.perf_counter() - started, latency.seconds))
                return latency
            busy += _next_batch(study, space, latency, evaluate, config, trials, done, started, progress)


def _next_batch(study, space, latency, evaluate, config, trials, done, started, progress) -> float:
    """One batch of the synchronous loop (`done` trials finished of `trials`) and its progress line;
    the evaluators' busy seconds."""
    finished = {
        t.user_attrs["digest"]: t
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE and "digest" in t.user_attrs
    }
    batch: list[optuna.Trial] = []
    try:
        reused, skipped, seconds = _run_batch(
            study, space, latency, evaluate, config, min(config.batch, config.trials - done), finished, batch, progress
        )
    except (
        KeyboardInterrupt
    ):  # Ctrl-C or SIGTERM, wherever it lands: running trials are marked interrupted, re-run on --resume
        # Every RUNNING trial, not only those in `batch`: one stopped inside `study.ask()` (signals are held there,
        # an error in the sampler is not) has a row but no place in `batch`. The driver is the study's only writer.
        running = recover_interrupted(study)
        progress(f"stopped: {running} running trial(s) marked interrupted; --resume re-runs them")
        raise
    done += len(batch)
    elapsed = time.perf_counter() - started
    with interrupts.deferred():
        best = best_feasible(study)
    progress(
        f"[{min(done, config.trials)}/{config.trials}] trials finished ({elapsed:.0f} s)"
        + (f"; {skipped} over the budget, not scored" if skipped else "")
        + (f"; {reused} repeated arch(s) reused earlier results" if reused else "")
        + (f"; best feasible accuracy {best.values[0]:.4f} at {best.values[1]:.3f} ms" if best else "")
    )
    return seconds


def _run_batch(study, space, latency, evaluate, config, size, finished, batch, progress) -> tuple[int, int, float]:
    """Ask `size` trials (appended to `batch` as soon as each exists), judge their latency,
    evaluate the fresh archs within the budget, tell every trial.

    Returns how many trials reused an earlier result instead of being evaluated, how many
    were over the budget (told PRUNED, not scored), and the evaluations' own seconds. The storage is written with Ctrl-C /
    SIGTERM held (nas.interrupts); the measurement and the evaluation, the long parts, stop at once.
    """
    with interrupts.deferred():
        archs = ask(study, space, size, batch)
    judgements = latency.judge(archs)
    with interrupts.deferred():
        constrain(study, config, batch, judgements)
    scored = [a for a, j in zip(archs, judgements) if not j.skipped]
    # Each arch is evaluated once: one already finished in the study, or twice in this batch, reuses that result.
    fresh = list({a.digest: a for a in scored if a.digest not in finished}.values())
    evaluated = dict(zip((a.digest for a in fresh), evaluate(fresh) if fresh else []))
    with interrupts.deferred():
        tell(study, config, batch, archs, judgements, finished, evaluated, progress)
    seconds = sum(r.get("seconds", 0.0) for r in evaluated.values() if isinstance(r, dict))
    return len(scored) - len(fresh), len(archs) - len(scored), seconds

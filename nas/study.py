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
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna

from nas import interrupts
from nas.arch import Arch
from nas.errors import NasError
from nas.latency.table import LatencyTable
from nas.latency.trials import TrialLatency
from nas.space import SearchSpace
from nas.storage import check as check_storage
from nas.storage import normalize, redact, study_not_found

SAMPLERS = ("nsga2", "tpe", "random", "gp")
THIRD_OBJECTIVES = ("params", "macs")
DASHBOARD_CONSTRAINTS = "constraints"


@dataclass(frozen=True)
class SearchConfig:
    trials: int = 100
    batch: int = 4
    sampler: str = "tpe"
    seed: int = 0
    budget_ms: float | None = None
    third_objective: str | None = None


# ---- parameters <-> arch -----------------------------------------------------------------------


def suggest_arch(trial: optuna.trial.BaseTrial, space: SearchSpace) -> Arch:
    """A fixed parameterisation: embed_dim, depth and, for every layer up to the space's largest
    depth, its kernel choice (a label such as `taylor-o2-compact`), heads and mlp_ratio — the
    same parameters in every trial, so that every sampler models all of them (a sampler falls
    back to independent sampling for parameters that only some trials have). The arch uses the
    first `depth` layers; the others' values change neither the arch nor its digest."""
    embed_dim = trial.suggest_categorical("embed_dim", list(space.embed_dim))
    depth = trial.suggest_categorical("depth", list(space.depth))
    choices = {spec.label: spec for spec in space.kernel_choices()}
    layers = []
    for i in range(max(space.depth)):
        spec = choices[trial.suggest_categorical(f"l{i}_kernel", list(choices))]
        heads = trial.suggest_categorical(f"l{i}_heads", list(space.heads))
        ratio = trial.suggest_categorical(f"l{i}_mlp_ratio", list(space.mlp_ratio))
        layers.append(space.make_layer(spec, heads, ratio))
    return space.validate(space.make_arch(embed_dim, layers[:depth]))


def arch_of(trial: optuna.trial.FrozenTrial, space: SearchSpace) -> Arch:
    """The arch a trial evaluated, from the one place it is stored (the `arch` attribute)."""
    return space.validate(Arch.from_dict(trial.user_attrs["arch"], f"trial {trial.number}"))


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


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished trials that count towards --trials (interrupted ones are re-run instead); a
    PRUNED trial is an arch over the budget, judged but not scored."""
    state = trial.state
    return state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) or (
        state == optuna.trial.TrialState.FAIL and not trial.user_attrs.get("interrupted")
    )


def recover_interrupted(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a killed process as failed-interrupted and re-enqueue them."""
    with interrupts.deferred():
        stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for trial in stale:
            _interrupt(study, trial)
    return len(stale)


def _interrupt(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """FAIL the trial as interrupted and enqueue its arch again: the parameters it had sampled and
    those it had been enqueued with (a trial stopped inside `ask` may have only the latter)."""
    study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
    study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    study.enqueue_trial({**trial.system_attrs.get("fixed_params", {}), **trial.params}, skip_if_exists=False)


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
        return _run_async(study, space, latency, pool, config, progress, evaluators or len(pool.actors))
    started = time.perf_counter()
    busy = 0.0
    while True:
        with interrupts.deferred():
            trials = study.get_trials(deepcopy=False)
        done = sum(counted(t) for t in trials)
        if done >= config.trials:
            progress(latency.summary())
            if evaluators:
                progress(busy_line(busy, evaluators, time.perf_counter() - started, latency.seconds))
            return latency
        finished = {
            t.user_attrs["digest"]: t
            for t in trials
            if t.state == optuna.trial.TrialState.COMPLETE and "digest" in t.user_attrs
        }
        batch: list[optuna.Trial] = []
        try:
            reused, skipped, seconds = _run_batch(
                study,
                space,
                latency,
                evaluate,
                config,
                min(config.batch, config.trials - done),
                finished,
                batch,
                progress,
            )
            busy += seconds
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
            best = _best_feasible(study)
        progress(
            f"[{min(done, config.trials)}/{config.trials}] trials finished ({elapsed:.0f} s)"
            + (f"; {skipped} over the budget, not scored" if skipped else "")
            + (f"; {reused} repeated arch(s) reused earlier results" if reused else "")
            + (f"; best feasible accuracy {best.values[0]:.4f} at {best.values[1]:.3f} ms" if best else "")
        )


def busy_line(busy_s: float, evaluators: int, stage_s: float, measuring_s: float | None) -> str:
    """How much of the search's evaluator time went into evaluations (`measuring_s` None: the asynchronous loop)."""
    share = busy_s / (evaluators * stage_s) if stage_s > 0 else 0.0
    head = f"evaluators: busy {busy_s:.1f} s of {evaluators} x {stage_s:.1f} s ({share:.0%}); the rest they waited"
    if measuring_s is None:
        return head + ": for the sampler and the storage (asynchronous: no batches, no measurements)"
    return (
        head
        + f": for the trials' latency measurements ({measuring_s:.1f} s, taken with no evaluation running), for each "
        "batch's slowest trial, for the sampler"
    )


def _run_async(study, space, latency, pool, config, progress, evaluators) -> TrialLatency:
    """The asynchronous loop: keep every evaluator busy; tell each trial as its result comes back.
    One trial is asked ahead (while the evaluators run), so a freed evaluator starts at once instead
    of waiting for the sampler. A trial whose arch is already finished reuses that result; one whose
    arch is in flight waits for it (each arch is evaluated once). On Ctrl-C / SIGTERM every trial
    asked and not told (running, waiting or asked ahead) is marked interrupted."""
    started, busy, told = time.perf_counter(), 0.0, 0
    flying: dict[int, tuple] = {}  # ticket -> (trial, arch, judgement)
    waiting: dict[str, list] = {}  # digest in flight -> the other trials of that arch
    ahead: list[tuple] = []  # asked and judged, not yet given to an evaluator
    state = {}

    def ask_one() -> tuple | None:
        """Ask and judge one trial; None when it was told at once (over the budget, or a finished arch)."""
        batch: list[optuna.Trial] = []
        with interrupts.deferred():
            arch = _ask(study, space, 1, batch)[0]
        judgement = latency.judge([arch])[0]
        with interrupts.deferred():
            _constrain(study, config, batch, [judgement])
            if judgement.skipped or arch.digest in finished:
                _tell(study, config, batch, [arch], [judgement], finished, {}, progress)
                state["done"] += 1
                return None
        return batch[0], arch, judgement

    def give(item: tuple) -> None:
        if item[1].digest in finished:  # asked ahead, and its arch finished meanwhile: reuse that result
            with interrupts.deferred():
                _tell(study, config, [item[0]], [item[1]], [item[2]], finished, {}, progress)
            state["done"] += 1
        elif item[1].digest in {a.digest for _, a, _ in flying.values()}:
            waiting.setdefault(item[1].digest, []).append(item)
        else:
            flying[pool.start(item[1])] = item

    def pending() -> int:
        return len(flying) + sum(len(v) for v in waiting.values()) + len(ahead)

    try:
        with interrupts.deferred():
            trials = study.get_trials(deepcopy=False)
        state["done"] = sum(counted(t) for t in trials)
        finished = {
            t.user_attrs["digest"]: t
            for t in trials
            if t.state == optuna.trial.TrialState.COMPLETE and "digest" in t.user_attrs
        }
        while state["done"] < config.trials:
            while pool.idle() and (ahead or state["done"] + pending() < config.trials):
                item = ahead.pop(0) if ahead else ask_one()
                if item is not None:
                    give(item)
            if not ahead and state["done"] + pending() < config.trials:
                item = ask_one()
                if item is not None:
                    ahead.append(item)
            for ticket, result in pool.wait():
                trial, arch, judgement = flying.pop(ticket)
                group = [(trial, arch, judgement)] + waiting.pop(arch.digest, [])
                with interrupts.deferred():
                    _tell(
                        study,
                        config,
                        [g[0] for g in group],
                        [g[1] for g in group],
                        [g[2] for g in group],
                        {},
                        {arch.digest: result},
                        progress,
                    )
                    if isinstance(result, dict):
                        busy += result.get("seconds", 0.0)
                        finished_trial = study._storage.get_trial(trial._trial_id)
                        if finished_trial.state == optuna.trial.TrialState.COMPLETE:
                            finished[arch.digest] = finished_trial
                state["done"] += len(group)
                told += len(group)
                if ahead and pool.idle():  # the trial asked ahead starts at once on the freed evaluator
                    give(ahead.pop(0))
            if told >= config.batch or state["done"] >= config.trials:
                told = 0
                with interrupts.deferred():
                    best = _best_feasible(study)
                progress(
                    f"[{min(state['done'], config.trials)}/{config.trials}] trials finished ({time.perf_counter() - started:.0f} s, "
                    f"asynchronous, {len(flying)} in flight)"
                    + (f"; best feasible accuracy {best.values[0]:.4f} at {best.values[1]:.3f} ms" if best else "")
                )
    except KeyboardInterrupt:
        running = recover_interrupted(study)
        progress(f"stopped: {running} running trial(s) marked interrupted; --resume re-runs them")
        raise
    progress(latency.summary())
    progress(busy_line(busy, evaluators, time.perf_counter() - started, None))
    return latency


def _run_batch(study, space, latency, evaluate, config, size, finished, batch, progress) -> tuple[int, int, float]:
    """Ask `size` trials (appended to `batch` as soon as each exists), judge their latency,
    evaluate the fresh archs within the budget, tell every trial.

    Returns how many trials reused an earlier result instead of being evaluated, how many
    were over the budget (told PRUNED, not scored), and the evaluations' own seconds. The storage is written with Ctrl-C /
    SIGTERM held (nas.interrupts); the measurement and the evaluation, the long parts, stop at once.
    """
    with interrupts.deferred():
        archs = _ask(study, space, size, batch)
    judgements = latency.judge(archs)
    with interrupts.deferred():
        _constrain(study, config, batch, judgements)
    scored = [a for a, j in zip(archs, judgements) if not j.skipped]
    # Each arch is evaluated once: one already finished in the study, or twice in this batch, reuses that result.
    fresh = list({a.digest: a for a in scored if a.digest not in finished}.values())
    evaluated = dict(zip((a.digest for a in fresh), evaluate(fresh) if fresh else []))
    with interrupts.deferred():
        _tell(study, config, batch, archs, judgements, finished, evaluated, progress)
    seconds = sum(r.get("seconds", 0.0) for r in evaluated.values() if isinstance(r, dict))
    return len(scored) - len(fresh), len(archs) - len(scored), seconds


def _ask(study, space, size, batch) -> list[Arch]:
    """Ask `size` trials (appended to `batch` as soon as each exists); their archs."""
    for _ in range(size):
        batch.append(study.ask())
    archs = []
    for trial in batch:
        arch = suggest_arch(trial, space)
        trial.set_user_attr("arch", arch.to_dict())
        trial.set_user_attr("digest", arch.digest)
        archs.append(arch)
    return archs


def _constrain(study, config, batch, judgements) -> None:
    """Each trial's latency attributes and its budget constraint (latency − budget)."""
    for trial, judgement in zip(batch, judgements):
        for key, value in judgement.attrs().items():
            trial.set_user_attr(key, value)
        slack = judgement.latency_ms - config.budget_ms if config.budget_ms is not None else 0.0
        trial.set_constraint("latency", slack)
        # optuna-dashboard (0.21) reads constraints from the list format of Optuna < 5; Optuna reads both.
        study._storage.set_trial_system_attr(trial._trial_id, DASHBOARD_CONSTRAINTS, [slack])


def _tell(study, config, batch, archs, judgements, finished, evaluated, progress) -> None:
    """Tell every trial of the batch its result (an earlier trial's for a repeated arch), its
    failure, or PRUNED for an arch over the budget."""
    for trial, arch, judgement in zip(batch, archs, judgements):
        if judgement.skipped:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        if arch.digest in finished:
            earlier = finished[arch.digest]
            result = {key: earlier.user_attrs[key] for key in ("accuracy", "macs", "params")}
            trial.set_user_attr("reused_from", earlier.number)
        else:
            result = evaluated[arch.digest]
            if isinstance(result, dict) and "seconds" in result:
                trial.set_user_attr("eval_seconds", result["seconds"])
        if isinstance(result, BaseException) or not math.isfinite(result.get("accuracy", math.nan)):
            reason = repr(result) if isinstance(result, BaseException) else "accuracy is NaN"
            trial.set_user_attr("failure", reason[:500])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            progress(f"trial {trial.number} failed: {reason[:200]}")
            continue
        for key in ("accuracy", "macs", "params"):
            trial.set_user_attr(key, result[key])
        values = [result["accuracy"], judgement.latency_ms] + (
            [result[config.third_objective]] if config.third_objective else []
        )
        study.tell(trial, values)


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(value <= 0 for value in trial.constraints.values())


def budget_counts(trials: Sequence[optuna.trial.FrozenTrial]) -> tuple[int, int, int]:
    """(within, judged, over) the budget: the trials judged against it are the COMPLETE ones and the
    PRUNED ones (over it, not scored) with a latency constraint. FAIL trials — interrupted (re-run on
    --resume) or broken — were never judged and are not counted (they were: "6 of 8 within")."""
    judged = [
        t
        for t in trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) and t.constraints
    ]
    within = sum(t.state == optuna.trial.TrialState.COMPLETE and feasible(t) for t in judged)
    return within, len(judged), sum(t.state == optuna.trial.TrialState.PRUNED for t in judged)


def _best_feasible(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if feasible(t)]
    return max(complete, key=lambda t: (t.values[0], -t.values[1]), default=None)


def pareto_front(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Feasible, complete, non-dominated trials (accuracy up, latency down), by latency."""
    candidates = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and feasible(t)]

    def dominates(a, b):
        return (
            a.values[0] >= b.values[0]
            and a.values[1] <= b.values[1]
            and (a.values[0] > b.values[0] or a.values[1] < b.values[1])
        )

    front = [t for t in candidates if not any(dominates(o, t) for o in candidates)]
    unique = {}
    for t in sorted(front, key=lambda t: (t.values[1], -t.values[0], t.number)):
        unique.setdefault((t.values[0], t.values[1]), t)
    return list(unique.values())


def smallest_latency(space: SearchSpace, table: LatencyTable) -> float:
    """The lowest predicted latency of any arch of the space (blocks are independent per layer)."""
    best = math.inf
    for e in space.embed_dim:
        arch_min = min(
            table.raw(space.make_arch(e, [space.make_layer(spec, h, r)] * min(space.depth)))
            for spec in space.kernel_choices()
            for h in space.heads
            for r in space.mlp_ratio
        )
        best = min(best, arch_min)
    if table.calibration is None:
        return best
    return table.calibration["a"] * best + table.calibration["b"]  # a > 0: the calibration keeps the order

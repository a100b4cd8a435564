"""The steps both search loops share (nas.study's batches, nas.study_async's asynchronous loop):
a trial's parameters and its arch, asking trials, setting their latency attributes and budget
constraint, telling their results; which finished trials count towards --trials, the recovery of
trials left RUNNING by a killed process, and the evaluators' busy line.
"""

from __future__ import annotations

import math

import optuna

from nas import interrupts
from nas.arch import Arch
from nas.space import SearchSpace

DASHBOARD_CONSTRAINTS = "constraints"


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


# ---- finished and interrupted trials ---------------------------------------------------------


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


# ---- asking and telling --------------------------------------------------------------------------


def ask(study, space, size, batch) -> list[Arch]:
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


def constrain(study, config, batch, judgements) -> None:
    """Each trial's latency attributes and its budget constraint (latency − budget)."""
    for trial, judgement in zip(batch, judgements):
        for key, value in judgement.attrs().items():
            trial.set_user_attr(key, value)
        slack = judgement.latency_ms - config.budget_ms if config.budget_ms is not None else 0.0
        trial.set_constraint("latency", slack)
        # optuna-dashboard (0.21) reads constraints from the list format of Optuna < 5; Optuna reads both.
        study._storage.set_trial_system_attr(trial._trial_id, DASHBOARD_CONSTRAINTS, [slack])


def tell(study, config, batch, archs, judgements, finished, evaluated, progress) -> None:
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


# ---- the evaluators' busy line ----------------------------------------------------------------


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

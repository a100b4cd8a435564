"""The search's asynchronous loop (nas.study's `run_search` with an evaluator pool and no
measured latency): each evaluator that finishes has its trial told and gets the next trial at
once, so none waits for a batch's slowest arch.
"""

from __future__ import annotations

import contextlib
import time

import optuna

from nas import interrupts
from nas.feasibility import best_feasible
from nas.latency.trials import TrialLatency
from nas.progress import Bar
from nas.study_trials import ask, busy_line, constrain, counted, recover_interrupted, tell


def run_async(study, space, latency, pool, config, progress, evaluators) -> TrialLatency:
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
            arch = ask(study, space, 1, batch)[0]
        judgement = latency.judge([arch])[0]
        with interrupts.deferred():
            constrain(study, config, batch, [judgement])
            if judgement.skipped or arch.digest in finished:
                tell(study, config, batch, [arch], [judgement], finished, {}, progress)
                state["done"] += 1
                return None
        return batch[0], arch, judgement

    def give(item: tuple) -> None:
        if item[1].digest in finished:  # asked ahead, and its arch finished meanwhile: reuse that result
            with interrupts.deferred():
                tell(study, config, [item[0]], [item[1]], [item[2]], finished, {}, progress)
            state["done"] += 1
        elif item[1].digest in {a.digest for _, a, _ in flying.values()}:
            waiting.setdefault(item[1].digest, []).append(item)
        else:
            flying[pool.start(item[1])] = item

    def pending() -> int:
        return len(flying) + sum(len(v) for v in waiting.values()) + len(ahead)

    stack = contextlib.ExitStack()  # the progress bar, closed however the loop ends
    try:
        with interrupts.deferred():
            trials = study.get_trials(deepcopy=False)
        state["done"] = sum(counted(t) for t in trials)
        shown = [min(state["done"], config.trials)]
        bar = stack.enter_context(Bar(config.trials, "search", unit="trial", initial=shown[0]))

        def advance() -> None:  # the bar to the trials finished, however they finished (scored or reused)
            bar.update(min(state["done"], config.trials) - shown[0])
            shown[0] = min(state["done"], config.trials)

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
                    tell(
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
            advance()
            if told >= config.batch or state["done"] >= config.trials:
                told = 0
                with interrupts.deferred():
                    best = best_feasible(study)
                progress(
                    f"[{min(state['done'], config.trials)}/{config.trials}] trials finished ({time.perf_counter() - started:.0f} s, "
                    f"asynchronous, {len(flying)} in flight)"
                    + (f"; best feasible accuracy {best.values[0]:.4f} at {best.values[1]:.3f} ms" if best else "")
                )
    except KeyboardInterrupt:
        stack.close()
        running = recover_interrupted(study)
        progress(f"stopped: {running} running trial(s) marked interrupted; --resume re-runs them")
        raise
    finally:
        stack.close()
    progress(latency.summary())
    progress(busy_line(busy, evaluators, time.perf_counter() - started, None))
    return latency

"""A pool of Ray evaluator actors: each holds the supernet and the validation split once,
received through Ray's object store (no actor opens the run directory).

Ray restarts a dead actor (`max_restarts`) and retries the call on the new one
(`max_task_retries`). When those are spent, the arch's result is the exception (the search
records that trial as failed) and the pool replaces the dead actor with a fresh one, so
later trials run at full capacity; the dead one is killed for good first, so that a restart Ray
still has under way cannot hold the resources its replacement needs. With `timeout_s`, a result that has not come back by
then is a failure too (TimeoutError), and its actor is killed and replaced: an actor whose
restart never completes (seen with Ray 2.60 when an actor is killed twice in quick
succession) cannot hang the search.

`evaluate` scores a batch; `start`/`wait` give one arch to an idle actor and answer as soon as
any actor has finished, for the search's asynchronous loop (nas.study_async).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import ray

from nas.arch import Arch
from nas.errors import NasError
from nas.evaluate import Evaluator


class EvaluatorPool:
    def __init__(
        self,
        state,
        size: int,
        threads_each: int = 1,
        max_restarts: int = 3,
        max_task_retries: int = 2,
        scoring: dict | None = None,
        gpus_each: float | None = None,
        resources: dict | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """`state`: `nas.evaluate.evaluation_state(run)` (or a reference to it in the object
        store), put there once and shared by every actor. `scoring`: Evaluator's device,
        precision and val_images. On CUDA each actor asks Ray for `gpus_each` GPUs (fractions
        allowed); by default a whole GPU when the cluster has one per actor, else a share of one.
        `resources`: custom Ray resources each actor needs (to place them on chosen nodes)."""
        scoring = scoring or {}
        gpus = 0.0
        if str(scoring.get("device", "cpu")).startswith("cuda"):
            total = ray.cluster_resources().get("GPU", 0)
            gpus = (
                gpus_each if gpus_each is not None else 1.0 / math.ceil(size / max(1, int(total)))
            )  # a share must fit on one GPU
            fits = (
                0 if gpus <= 0 else int(total // gpus) if gpus >= 1 else int(total) * math.floor(1 / gpus)
            )  # a fraction must fit on one GPU
            if size > fits:
                raise NasError(
                    f"not enough GPUs in the Ray cluster for {size} evaluator(s) of {gpus} GPU(s) each "
                    f"(it has {total:g}); use fewer --evaluators, a smaller --gpus-per-evaluator or --compute-device cpu"
                )
            scoring = {**scoring, "device": "cuda"}  # Ray sets CUDA_VISIBLE_DEVICES: the actor's GPU is its cuda:0
        self.state = state if isinstance(state, ray.ObjectRef) else ray.put(state)
        remote = ray.remote(Evaluator).options(
            num_cpus=threads_each,
            num_gpus=gpus,
            resources=resources or {},
            max_restarts=max_restarts,
            max_task_retries=max_task_retries,
        )
        self._new_actor = lambda: remote.remote(self.state, threads_each, **scoring)
        self.actors = [self._new_actor() for _ in range(size)]
        self.replaced = 0
        self.timeout_s = timeout_s
        self._flying: dict[int, tuple] = {}  # actor index -> (its in-flight ref, when it started), for `start`/`wait`

    def evaluate(self, archs: Sequence[Arch]) -> list[dict | BaseException]:
        """Score archs in parallel, round-robin over the actors; failures come back as exceptions."""
        return self.collect(self.submit(archs))

    def submit(self, archs: Sequence[Arch]) -> list:
        return [
            (i % len(self.actors), self.actors[i % len(self.actors)].evaluate.remote(arch))
            for i, arch in enumerate(archs)
        ]

    def collect(self, submitted: list) -> list[dict | BaseException]:
        results: list[dict | BaseException] = []
        dead: set[int] = set()
        for index, ref in submitted:
            result, died = self._result(index, ref, self.timeout_s)
            results.append(result)
            if died:
                dead.add(index)
        for index in dead:
            self._replace(index)
        return results

    # ---- asynchronous use (nas.study_async's loop without batches): one arch per actor at a time ----

    def idle(self) -> int:
        """How many actors have no arch in flight (`start` gives one to each)."""
        return len(self.actors) - len(self._flying)

    def start(self, arch: Arch) -> int:
        """Give `arch` to an idle actor; returns that actor's index, the ticket `wait` answers with."""
        index = next(i for i in range(len(self.actors)) if i not in self._flying)
        self._flying[index] = (self.actors[index].evaluate.remote(arch), time.monotonic())
        return index

    def wait(self) -> list[tuple[int, dict | BaseException]]:
        """Block until at least one started arch has its result (or failed, or passed `timeout_s`);
        returns (ticket, result) for each, the dead actors replaced as in `collect`."""
        if not self._flying:
            return []
        timeout = None
        if self.timeout_s is not None:
            oldest = min(started for _, started in self._flying.values())
            timeout = max(0.0, oldest + self.timeout_s - time.monotonic())
        ready, _ = ray.wait([ref for ref, _ in self._flying.values()], num_returns=1, timeout=timeout)
        ready = set(ready)
        out = []
        for index, (ref, started) in list(self._flying.items()):
            late = self.timeout_s is not None and time.monotonic() - started >= self.timeout_s
            if ref not in ready and not late:
                continue
            del self._flying[index]
            result, died = self._result(index, ref, 0 if ref not in ready else None)
            out.append((index, result))
            if died:
                self._replace(index)
        return out

    def _result(self, index: int, ref, timeout_s: float | None) -> tuple[dict | BaseException, bool]:
        """The result of `ref` from actor `index` (or its failure), and whether that actor is dead."""
        try:
            return ray.get(ref, timeout=timeout_s), False
        except ray.exceptions.GetTimeoutError:
            ray.kill(self.actors[index], no_restart=True)
            return TimeoutError(f"no result from evaluator {index} within {self.timeout_s:g} s"), True
        except ray.exceptions.RayActorError as error:  # the actor died (ActorDiedError in newer Ray is one)
            return error, True
        except (ray.exceptions.RayError, ValueError) as error:
            return error, False

    def _replace(self, index: int) -> None:
        # Dead for good before the replacement: Ray may still be restarting the old actor (a restart budget left, or a
        # restart that never completes), and a restarting actor keeps its CPUs and GPUs reserved, which its replacement
        # would wait for.
        ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self._new_actor()
        self.replaced += 1

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)

"""A pool of Ray evaluator actors: each holds the supernet and the validation split once.

Ray restarts a dead actor (`max_restarts`) and retries the call on the new one
(`max_task_retries`). When those are spent, the arch's result is the exception (the search
records that trial as failed) and the pool replaces the dead actor with a fresh one, so
later trials run at full capacity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import ray

from nas.arch import Arch
from nas.errors import NasError
from nas.evaluate import Evaluator


class EvaluatorPool:
    def __init__(self, run_dir: str, size: int, threads_each: int = 1, max_restarts: int = 3, max_task_retries: int = 2,
                 scoring: dict | None = None) -> None:
        """`scoring`: Evaluator's device, precision and val_images. On CUDA each actor asks Ray
        for a whole GPU when the cluster has one per actor, else for a share of one."""
        scoring = scoring or {}
        gpus = 0.0
        if str(scoring.get("device", "cpu")).startswith("cuda"):
            total = ray.cluster_resources().get("GPU", 0)
            if not total:
                raise NasError("--compute-device cuda: the Ray cluster has no GPU for the evaluators; use --compute-device cpu")
            gpus = 1.0 / math.ceil(size / max(1, int(total)))  # a share must fit on one GPU: 1, 1/2, 1/3, ... of one
            scoring = {**scoring, "device": "cuda"}  # Ray sets CUDA_VISIBLE_DEVICES: the actor's GPU is its cuda:0
        remote = ray.remote(Evaluator).options(num_cpus=threads_each, num_gpus=gpus, max_restarts=max_restarts, max_task_retries=max_task_retries)
        self._new_actor = lambda: remote.remote(str(run_dir), threads_each, **scoring)
        self.actors = [self._new_actor() for _ in range(size)]
        self.replaced = 0

    def evaluate(self, archs: Sequence[Arch]) -> list[dict | BaseException]:
        """Score archs in parallel, round-robin over the actors; failures come back as exceptions."""
        return self.collect(self.submit(archs))

    def submit(self, archs: Sequence[Arch]) -> list:
        return [(i % len(self.actors), self.actors[i % len(self.actors)].evaluate.remote(arch)) for i, arch in enumerate(archs)]

    def collect(self, submitted: list) -> list[dict | BaseException]:
        results: list[dict | BaseException] = []
        dead: set[int] = set()
        for index, ref in submitted:
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError as error:  # the actor died (ActorDiedError in newer Ray is one)
                results.append(error)
                dead.add(index)
            except (ray.exceptions.RayError, ValueError) as error:
                results.append(error)
        for index in dead:
            self.actors[index] = self._new_actor()
            self.replaced += 1
        return results

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)

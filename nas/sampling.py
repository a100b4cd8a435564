"""Subnet sampling of supernet training: which archs each step trains.

Determinism: the subnets, the augmentation and drop-path of step s depend only on
(seed, s) (`step_rng`, `step_seeds`), so data-parallel ranks sample the same subnets, and a
resumed run equals an uninterrupted one. `sandwich` draws [largest, smallest, random...]
with a random kernel per layer; under `--kernel-sampling fair`, `fair_kernels` gives each
layer position every kernel choice once per block of steps and `fair_sandwich` shares the
step's kernel vector between teacher and students.
"""

from __future__ import annotations

import random

from nas.arch import Arch
from nas.errors import NasError
from nas.space import SearchSpace


def step_rng(seed: int, step: int) -> random.Random:
    """The RNG of one step: the same on every data-parallel rank, and after a resume."""
    return random.Random(f"nas-train:{seed}:{step}")


def step_seeds(seed: int, step: int) -> tuple[random.Random, int, int]:
    """Step `step`'s RNG (for its subnets), drop-path seed and augmentation seed."""
    rng = step_rng(seed, step)
    return rng, rng.getrandbits(63), rng.getrandbits(62)


TEACHERS = ("fair", "softmax")


def sandwich(space: SearchSpace, rng: random.Random, random_subnets: int, teacher: str = "fair") -> list[Arch]:
    """[largest widths, smallest widths, random subnets...] for one step.

    The smallest widths take a random kernel per layer. The largest widths (trained on the
    labels, the teacher of the others) take softmax everywhere with teacher="softmax", or a
    random kernel per layer with teacher="fair": then every kernel is trained on the labels
    at full width as often as any other, instead of only imitating softmax, which made
    the supernet overrate softmax-heavy archs and underrate the rest."""
    if teacher not in TEACHERS:
        raise NasError(f"teacher {teacher!r}: use one of {', '.join(TEACHERS)}")
    largest = space.largest() if teacher == "softmax" else space.largest(rng=rng)
    return [largest, space.smallest(rng=rng)] + [space.sample(rng) for _ in range(random_subnets)]


KERNEL_SAMPLINGS = ("random", "fair")


def fair_kernels(space: SearchSpace, seed: int, step: int) -> list:
    """The kernel choice of every layer position at `step` under strict fairness (FairNAS): the
    steps fall into blocks of K (the number of kernel choices), and within a block each layer
    position takes each choice exactly once, in a seeded order of its own. A function of
    (seed, step) alone: every data-parallel rank and a resumed run draw the same."""
    choices = space.kernel_choices()
    block, slot = divmod(step, len(choices))
    return [
        choices[random.Random(f"nas-fair:{seed}:{block}:{layer}").sample(range(len(choices)), len(choices))[slot]]
        for layer in range(max(space.depth))
    ]


def fair_sandwich(space: SearchSpace, rng: random.Random, random_subnets: int, kernels: list) -> list[Arch]:
    """[largest, smallest, random widths...], all with the step's kernel vector `kernels` (layer i
    uses kernels[i]): the teacher differs from its students in width only."""

    def arch(embed: int, depth: int, heads, ratios) -> Arch:
        return space.make_arch(embed, [space.make_layer(kernels[i], heads(), ratios()) for i in range(depth)])

    largest = arch(max(space.embed_dim), max(space.depth), lambda: max(space.heads), lambda: max(space.mlp_ratio))
    smallest = arch(min(space.embed_dim), min(space.depth), lambda: min(space.heads), lambda: min(space.mlp_ratio))
    others = [
        arch(
            rng.choice(space.embed_dim),
            rng.choice(space.depth),
            lambda: rng.choice(space.heads),
            lambda: rng.choice(space.mlp_ratio),
        )
        for _ in range(random_subnets)
    ]
    return [largest, smallest] + others

"""Which blocks a host table holds: every block of the space when it can list them, else a
seeded sample of them (keras-tuner ``build(hp)`` spaces with wide ranges), whose missing blocks
the predictor prices with the per-kind cost model fitted on the sample
(``latency_models.extrapolate``)."""

from __future__ import annotations

from collections.abc import Hashable, Iterator

from search_spaces import Block, InputError, SearchSpace, TaskShape

__all__ = ["SAMPLED_ARCHS", "SAMPLED_BLOCKS", "blocks_to_profile"]

# The sample: the blocks of the extreme settings and of random architectures (seed 0), at least
# SAMPLED_BLOCKS of them, from at most SAMPLED_ARCHS networks.
SAMPLED_BLOCKS = 96
SAMPLED_ARCHS = 400


def blocks_to_profile(
    space: SearchSpace, task: TaskShape, limit: int = SAMPLED_BLOCKS, seed: int = 0
) -> tuple[list[Block], bool]:
    """The blocks a host table should hold, and whether they are all the space's: every block when
    the space lists them, else a sample: the blocks of the architectures whose settings are all the
    first or all the last value of each choice (the smallest and largest, for ordered choices),
    then of random ones, until at least ``limit`` distinct blocks. Architectures that fail to
    build are skipped."""
    every = space.all_blocks(task)
    if every is not None:
        return list(every), True
    import itertools
    import random

    from search_spaces import TrialFailedError

    choices = space.choices()
    rng = random.Random(seed)

    def archs() -> Iterator[Hashable]:
        for end in (0, -1):
            try:
                yield space.from_params({c.name: c.values[end] for c in choices})
            except InputError:
                continue
        for _ in range(SAMPLED_ARCHS):
            yield space.random(rng)

    found: dict[Block, None] = {}
    tried = 0
    for arch in itertools.islice(archs(), SAMPLED_ARCHS):
        tried += 1
        try:
            found.update(dict.fromkeys(space.blocks(arch, task)))
        except (TrialFailedError, InputError):
            continue
        if len(found) >= limit:
            break
    if not found:
        raise InputError(
            f"space {space.name!r}: none of {tried} sampled architectures could be built, so it has no blocks to profile."
        )
    return list(found), False

"""Low-rank factorization stage: truncated SVD splits Dense and 1x1 Conv2D kernels into two
thinner layers (``in -> r -> out``), the rank set directly or by the singular-value energy kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ._base import CompressData, Stage, StageError, check_count, stage_check
from .graph import rebuild
from .training import Trainer, recalibrate_batchnorm

__all__ = ["LowRank", "choose_rank"]


def choose_rank(singular: np.ndarray, rank: int | None, energy: float | None) -> int:
    """``rank`` capped at the kernel's, or the smallest rank keeping ``energy`` of sum(s^2)."""
    if rank is not None:
        return int(min(rank, len(singular)))
    cumulative = np.cumsum(singular**2) / max(float(np.sum(singular**2)), 1e-30)
    return int(np.searchsorted(cumulative, float(energy) - 1e-12) + 1)


@dataclass(frozen=True)
class LowRank(Stage):
    """Factor every Dense and 1x1 Conv2D kernel ``W (in x out)`` as ``A (in x r) @ B (r x out)``
    from its truncated SVD when that has fewer weights (``r * (in + out) < in * out``), then
    fine-tune. Give ``rank`` (an int >= 1) or ``energy`` (in (0, 1]), not both."""

    name: ClassVar[str] = "lowrank"
    main_arg: ClassVar[str | None] = "energy"

    energy: float | None = None
    rank: int | None = None
    epochs: int = 1
    trainer: Trainer = field(default_factory=Trainer, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rank is None and self.energy is None:
            object.__setattr__(self, "energy", 0.9)
        stage_check(
            self.rank is None or self.energy is None,
            self.name,
            "give rank or energy, not both",
            (self.rank, self.energy),
        )
        if self.rank is not None:
            stage_check(
                isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 1,
                self.name,
                "rank must be an int >= 1",
                self.rank,
            )
        if self.energy is not None:
            stage_check(0.0 < self.energy <= 1.0, self.name, "energy must be in (0, 1]", self.energy)
        check_count(self, "epochs", low=0)

    def apply(self, model: Any, data: CompressData) -> Any:
        from search_spaces.backend import keras

        k = keras()
        factored: list[str] = []

        def replace(layer: Any) -> list[tuple[Any, list[np.ndarray]]] | None:
            kind = type(layer).__name__
            if kind == "Dense":
                kernel = layer.get_weights()[0]
            elif kind == "Conv2D" and tuple(layer.kernel_size) == (1, 1) and layer.groups == 1:
                kernel = layer.get_weights()[0][0, 0]
            else:
                return None
            n_in, n_out = kernel.shape
            u, s, vt = np.linalg.svd(kernel, full_matrices=False)
            r = choose_rank(s, self.rank, self.energy)
            if r * (n_in + n_out) >= n_in * n_out:
                return None
            root = np.sqrt(s[:r])
            a, b = u[:, :r] * root, root[:, None] * vt[:r]
            config = layer.get_config()
            rest = layer.get_weights()[1:]
            if kind == "Dense":
                first = k.layers.Dense(r, use_bias=False, name=f"{layer.name}_lr_a")
                config["name"] = f"{layer.name}_lr_b"
                return [(first, [a]), (k.layers.Dense.from_config(config), [b, *rest])]
            first = k.layers.Conv2D(
                r, 1, strides=layer.strides, padding=layer.padding, use_bias=False, name=f"{layer.name}_lr_a"
            )
            config.update(name=f"{layer.name}_lr_b", strides=(1, 1), padding="valid")
            factored.append(layer.name)
            return [(first, [a[None, None]]), (k.layers.Conv2D.from_config(config), [b[None, None], *rest])]

        result = rebuild(model, replace, self.name)
        if len(result.layers) == len(model.layers):
            what = f"rank {self.rank}" if self.rank is not None else f"energy {self.energy}"
            raise StageError(
                f"stage {self.name}: no Dense or 1x1 Conv2D kernel gets smaller at {what}; nothing to factor."
            )
        if self.epochs:
            recalibrate_batchnorm(result, data.x_train, self.trainer.batch_size)
            self.trainer.fit(result, data, self.epochs, self.name)
        return result

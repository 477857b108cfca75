"""Knowledge distillation stage: the student trains on the teacher's softened outputs (at a
temperature) mixed with the true labels; plain fine-tuning is the same stage without a teacher."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ._base import CompressData, Stage, check_count, check_positive, stage_check
from .training import Trainer

__all__ = ["Distill", "FineTune"]


@dataclass(frozen=True)
class Distill(Stage):
    """Train the student for ``epochs`` on ``alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher ||
    student)`` at temperature ``T``. The teacher comes from the trainer (``--teacher``); with a
    teacher set, later pruning, QAT and low-rank fine-tuning distil from it too."""

    name: ClassVar[str] = "distill"
    main_arg: ClassVar[str | None] = "epochs"

    epochs: int = 3
    temperature: float = 4.0
    alpha: float = 0.3
    learning_rate: float = 1e-3
    trainer: Trainer = field(default_factory=Trainer, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_count(self, "epochs")
        check_positive(self, "temperature")
        stage_check(0.0 <= self.alpha <= 1.0, self.name, "alpha must be in [0, 1]", self.alpha)
        check_positive(self, "learning_rate")
        stage_check(self.trainer.teacher is not None, self.name, "needs a teacher model (--teacher)", None)

    def apply(self, model: Any, data: CompressData) -> Any:
        from dataclasses import replace

        from .pruning import copy_model

        trainer = replace(
            self.trainer, temperature=self.temperature, alpha=self.alpha, learning_rate=self.learning_rate
        )
        return trainer.fit(copy_model(model, self.name), data, self.epochs, self.name)


@dataclass(frozen=True)
class FineTune(Stage):
    """Train for ``epochs`` more (distilling if the trainer has a teacher)."""

    name: ClassVar[str] = "finetune"
    main_arg: ClassVar[str | None] = "epochs"

    epochs: int = 1
    learning_rate: float = 1e-3
    trainer: Trainer = field(default_factory=Trainer, repr=False, compare=False)
    rules: ClassVar = {"epochs": check_count, "learning_rate": check_positive}

    def apply(self, model: Any, data: CompressData) -> Any:
        from dataclasses import replace

        from .pruning import copy_model

        trainer = replace(self.trainer, learning_rate=self.learning_rate)
        return trainer.fit(copy_model(model, self.name), data, self.epochs, self.name)

"""The one place TensorFlow and tf_keras are imported, lazily and configured for Keras 2.

tensorflow-model-optimization works only with Keras 2, so ``TF_USE_LEGACY_KERAS=1`` must be set
before TensorFlow is first imported. Every module asks here instead of importing TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import cache
from types import ModuleType

__all__ = ["keras", "native_stderr_muted", "set_seed", "tf"]


def _quiet_env() -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


@contextlib.contextmanager
def native_stderr_muted() -> Iterator[None]:
    """TensorFlow's C++ start-up chatter (CUDA probing) ignores the log-level variables; send
    file descriptor 2 to a temp file while it imports, and replay it if the import fails."""
    if os.environ.get("EDGE_NAS_VERBOSE"):
        yield
        return
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@cache
def tf() -> ModuleType:
    """TensorFlow, imported on first use with Keras 2 selected and its logs quieted."""
    _quiet_env()
    import logging

    with native_stderr_muted():
        import tensorflow

    tensorflow.get_logger().setLevel(logging.ERROR)
    import warnings

    # The TFLite converter warns on every int8 conversion about statistics it does not need.
    warnings.filterwarnings("ignore", module=r"tensorflow\.lite\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(tf_keras|tensorflow)\..*")
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover - absl ships with tensorflow
        pass
    return tensorflow


@cache
def keras() -> ModuleType:
    """The tf_keras (Keras 2) package that tfmot needs."""
    tf()
    import tf_keras

    return tf_keras


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow so one trial trains the same way twice."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    tf().random.set_seed(seed)

"""``nas supernet train``: one weight-sharing supernet trained for every subnet of the space
(BigNAS/Once-for-All sandwich rule with in-place distillation), and its checkpoint folder.

A checkpoint is a plain ``.npz`` of named arrays (the supernet's weights and the optimizer's
state, read back with ``allow_pickle=False``) and ``supernet.json``, a manifest naming the space,
the task (with a fingerprint of its data), the epoch, the optimizer step and the weight file's
sha256. Each epoch writes a new weight file, then the manifest (each a temp file and a rename),
then removes the older file, so a folder killed at any moment holds a manifest and the file it
names; ``--resume`` continues from the epoch that manifest records.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import InputError, get_space, supernet_class

from .config import RunConfig, parse_config
from .data import TaskData, load_task

__all__ = [
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "EpochRecord",
    "EvaluationCache",
    "LoadedSupernet",
    "data_fingerprint",
    "load_supernet",
    "train_supernet",
]

FORMAT = "edge-nas-supernet"
VERSION = 1
MANIFEST = "supernet.json"
_OPTIMIZER = "optimizer/"


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of supernet training: the mean loss of its steps (largest subnet's cross-entropy
    plus the others' distillation losses, averaged over subnets) and the validation accuracy of
    the largest and the smallest subnet after their own BN calibration."""

    epoch: int
    loss: float
    largest_accuracy: float
    smallest_accuracy: float
    seconds: float


@dataclass(frozen=True)
class LoadedSupernet:
    """A checkpoint folder read back: the run config it was trained with, its task data, the
    supernet with its weights, and the manifest."""

    folder: Path
    config: RunConfig
    data: TaskData
    net: Any
    manifest: dict[str, Any]


def data_fingerprint(data: TaskData) -> str:
    """sha256 of the task's arrays (every split, shapes and dtypes included): a supernet trained
    on other data is refused, whatever the task is called."""
    h = hashlib.sha256()
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        array = np.ascontiguousarray(getattr(data, name))
        h.update(f"{name}{array.shape}{array.dtype}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _space(config: RunConfig) -> tuple[Any, type[Any]]:
    """The config's space and its supernet class (a space without one is refused)."""
    cls = supernet_class(config.space.name)
    return get_space(config.space.name, config.space.options), cls


def _task_doc(config: RunConfig, data: TaskData) -> dict[str, Any]:
    return {
        "name": config.task.name,
        "input_shape": list(data.shape.input_shape),
        "num_classes": data.shape.num_classes,
        "data_sha256": data_fingerprint(data),
    }


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _check_same(manifest: dict[str, Any], config: RunConfig, data: TaskData, where: str) -> None:
    """Refuse a folder whose supernet was trained on another space or task than ``config``'s."""
    space = manifest.get("space") or {}
    want = {"name": config.space.name, "options": _plain(dict(config.space.options))}
    if space != want:
        raise InputError(f"{where}: expected a supernet of space {want}, got one of space {space}.")
    task, mine = manifest.get("task") or {}, _task_doc(config, data)
    if task != mine:
        diff = sorted(k for k in mine if task.get(k) != mine[k])
        raise InputError(
            f"{where}: expected a supernet of task {mine['name']!r} ({', '.join(diff)} differ), "
            f"got one of task {task.get('name')!r}."
        )


def read_manifest(folder: Path) -> dict[str, Any]:
    """``supernet.json`` of ``folder``, checked: format, version, and the weight file it names
    present with its recorded sha256."""
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(f"{folder}: expected a supernet folder holding {MANIFEST}, got none.")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(
            f"{path}: expected a JSON manifest, got unreadable text ({e.__class__.__name__})."
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(
            f"{path}: expected format {FORMAT!r}, got {doc.get('format') if isinstance(doc, dict) else doc!r}."
        )
    if doc.get("version") != VERSION:
        raise InputError(f"{path}: expected version {VERSION}, got {doc.get('version')!r}.")
    weights = doc.get("weights")
    if not isinstance(weights, dict) or not isinstance(weights.get("file"), str) or "/" in weights["file"]:
        raise InputError(f"{path}: weights: expected a file name and its sha256, got {weights!r}.")
    file = folder / weights["file"]
    if not file.is_file():
        raise InputError(f"{file}: expected the weight file {MANIFEST} names, got no such file.")
    digest = _sha256(file)
    if digest != weights.get("sha256"):
        raise InputError(
            f"{file}: expected sha256 {weights.get('sha256')!r} (as {MANIFEST} records), got {digest!r}: "
            "a truncated or changed checkpoint."
        )
    return doc


def _read_weights(file: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError) as e:
        raise InputError(f"{file}: expected an .npz of arrays, got {e.__class__.__name__}: {e}.") from None


def _write_checkpoint(folder: Path, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    """The weight file, then the manifest naming it, each complete before its rename; then the
    older weight files go."""
    from latency_models.table import write_atomic

    name = f"weights-e{manifest['epoch']:04d}.npz"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is shared like any file
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    manifest = {**manifest, "weights": {"file": name, "sha256": _sha256(folder / name)}}
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    for old in folder.glob("weights-e*.npz"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_supernet(
    folder: str | os.PathLike[str], say: Callable[[str], None] = lambda s: None
) -> LoadedSupernet:
    """Read a checkpoint folder: the manifest, the config and task it was trained on (the data
    must still have its fingerprint), and the supernet with its weights."""
    folder = Path(folder)
    doc = read_manifest(folder)
    config = parse_config(doc.get("config"), f"{folder / MANIFEST}: config")
    data = load_task(config.task)
    _check_same(doc, config, data, str(folder / MANIFEST))
    space, supernet = _space(config)
    net = supernet(space, data.shape, seed=config.search.seed)
    arrays = _read_weights(folder / doc["weights"]["file"])
    net.set_weights({k: v for k, v in arrays.items() if not k.startswith(_OPTIMIZER)}, str(folder))
    say(f"supernet {folder}: epoch {doc['epoch']}, {len(net.shapes)} weight tensors")
    return LoadedSupernet(folder, config, data, net, doc)


def evaluate_subnet(net: Any, arch: Any, data: TaskData, samples: int) -> tuple[float, Any]:
    """Validation accuracy of ``arch`` with inherited weights after its own BN calibration on the
    first ``samples`` training samples; returns (accuracy, statistics)."""
    enc = net.encode(arch)
    stats = net.calibrate(enc, data.inputs(data.x_train), samples=samples)
    return net.accuracy(data.inputs(data.x_val), data.y_val, enc, stats), stats


EVALUATIONS = "evaluations.json"


class EvaluationCache:
    """Inherited validation accuracies of subnets, kept beside the supernet's weights
    (``evaluations.json``). A subnet's accuracy does not depend on the device, so each
    specialization of one supernet reuses every subnet the ones before it evaluated. The file
    names the weights (sha256), the data and the calibration size it holds accuracies for;
    another checkpoint (``--resume``) starts it anew. Written under a lock and atomically, so
    specializations running at once add to it without losing entries; a folder that cannot be
    written only costs the evaluations again."""

    def __init__(self, folder: str | os.PathLike[str], manifest: dict[str, Any], samples: int) -> None:
        self.path = Path(folder) / EVALUATIONS
        self.key = {
            "weights_sha256": manifest["weights"]["sha256"],
            "data_sha256": (manifest.get("task") or {}).get("data_sha256"),
            "calibration_samples": int(samples),
        }
        self.accuracy: dict[str, float] = self._read()
        self.hits = 0

    def _read(self) -> dict[str, float]:
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("key") != self.key:
                return {}
            return {str(a): float(v) for a, v in doc["accuracy"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # none yet, or damaged: ours to rebuild

    def get(self, arch: str) -> float | None:
        value = self.accuracy.get(arch)
        self.hits += value is not None
        return value

    def add(self, arch: str, accuracy: float) -> None:
        from latency_models.host_cache import locked
        from latency_models.table import write_atomic

        self.accuracy[arch] = float(accuracy)
        try:
            with locked(self.path):
                self.accuracy = {**self._read(), **self.accuracy}
                write_atomic(self.path, json.dumps({"key": self.key, "accuracy": self.accuracy}))
        except OSError:
            pass  # a read-only supernet folder: evaluations are not kept


def train_supernet(
    config: RunConfig,
    out: str | os.PathLike[str],
    resume: bool = False,
    epochs: int | None = None,
    say: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Train (or with ``resume`` continue) the supernet of ``config``'s space in ``out`` up to
    ``epochs`` (default ``supernet.epochs``); returns the final manifest."""
    from search_spaces.backend import keras, set_seed, tf

    folder = Path(out)
    sc = config.supernet
    total = sc.epochs if epochs is None else epochs
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise InputError(f"--epochs: expected an int >= 1, got {total!r}.")
    space, supernet = _space(config)
    data = load_task(config.task)
    previous = None
    if (folder / MANIFEST).exists():
        if not resume:
            raise InputError(f"--out: {folder} already holds a supernet; rerun with --resume to continue it.")
        previous = read_manifest(folder)
        _check_same(previous, config, data, str(folder / MANIFEST))
    elif folder.exists() and not folder.is_dir():
        raise InputError(f"--out: expected a folder, got the file {str(folder)!r}.")
    seed = config.search.seed
    set_seed(seed)
    net = supernet(space, data.shape, seed=seed)
    x, y = data.inputs(data.x_train), data.y_train
    if sc.max_train_samples and len(x) > sc.max_train_samples:
        x, y = x[: sc.max_train_samples], y[: sc.max_train_samples]
    steps_per_epoch = max(1, math.ceil(len(x) / sc.batch_size))
    k, t = keras(), tf()
    schedule = k.optimizers.schedules.CosineDecay(
        sc.learning_rate, decay_steps=total * steps_per_epoch, alpha=0.05
    )
    optimizer = k.optimizers.Adam(schedule)
    optimizer.build(net.trainable)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if previous is not None:
        arrays = _read_weights(folder / previous["weights"]["file"])
        net.set_weights({n: a for n, a in arrays.items() if not n.startswith(_OPTIMIZER)}, str(folder))
        state = [arrays.get(f"{_OPTIMIZER}{i:04d}") for i in range(len(optimizer.variables))]
        if any(s is None or s.shape != v.shape for s, v in zip(state, optimizer.variables, strict=True)):
            raise InputError(
                f"{folder}: expected the optimizer state of this supernet in its checkpoint, got another."
            )
        for variable, value in zip(optimizer.variables, state, strict=True):
            variable.assign(value)
        start_epoch, history = int(previous["epoch"]), list(previous.get("history") or [])
        say(
            f"resuming {folder} after epoch {start_epoch} (optimizer step {int(optimizer.iterations.numpy())})"
        )
    if start_epoch >= total:
        say(f"{folder}: already trained for {start_epoch} epochs (asked for {total})")
        return previous or {}
    largest, smallest = space.largest(), space.cheapest()
    encs_fixed = (net.encode(largest), net.encode(smallest))

    # One traced function for one subnet's gradients, called for each subnet of a step: a
    # function unrolling all of them traced about four times longer.
    @t.function(reduce_retracing=True)
    def gradients(xb: Any, target: Any, enc: Any) -> Any:
        with t.GradientTape() as tape:
            logits = net.logits(xb, enc, training=True)[0]
            loss = t.reduce_mean(t.nn.softmax_cross_entropy_with_logits(target, logits))
        grads = tape.gradient(loss, net.trainable, unconnected_gradients=t.UnconnectedGradients.ZERO)
        return loss, t.nn.softmax(logits), grads

    @t.function(reduce_retracing=True)
    def apply(grads: Any) -> None:
        optimizer.apply_gradients(
            zip([t.add_n(list(g)) for g in zip(*grads, strict=True)], net.trainable, strict=True)
        )

    def step(xb: np.ndarray, yb: np.ndarray, encs: tuple[Any, ...]) -> float:
        """The sandwich rule: the largest subnet learns the labels, the others its soft outputs
        (in-place distillation); one optimizer step on the sum of their gradients."""
        loss, teacher, grads = gradients(t.constant(xb), t.one_hot(yb, data.num_classes), encs[0])
        total, all_grads = float(loss), [grads]
        for enc in encs[1:]:
            loss, _, grads = gradients(t.constant(xb), teacher, enc)
            total += float(loss)
            all_grads.append(grads)
        apply(all_grads)
        return total / len(encs)

    folder.mkdir(parents=True, exist_ok=True)  # only now: bad input above leaves nothing behind
    manifest: dict[str, Any] = previous or {}
    for epoch in range(start_epoch + 1, total + 1):
        began = time.time()
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(x))
        losses = []
        for i in range(steps_per_epoch):
            idx = np.sort(order[i * sc.batch_size : (i + 1) * sc.batch_size])
            picks = random.Random(int(rng.integers(2**31)))
            encs = (*encs_fixed, *(net.encode(space.random(picks)) for _ in range(sc.random_subnets)))
            losses.append(step(x[idx], y[idx], encs))
        loss = float(np.mean(losses))
        if not math.isfinite(loss):
            raise InputError(
                f"supernet.learning_rate: training diverged (loss {loss}); expected a smaller rate, got {sc.learning_rate}."
            )
        big_acc = evaluate_subnet(net, largest, data, sc.calibration_samples)[0]
        small_acc = evaluate_subnet(net, smallest, data, sc.calibration_samples)[0]
        record = EpochRecord(epoch, loss, big_acc, small_acc, time.time() - began)
        history.append(asdict(record))
        say(
            f"epoch {epoch}/{total}: loss {loss:.4f}, validation accuracy largest {big_acc:.4f} "
            f"smallest {small_acc:.4f} ({record.seconds:.1f} s)"
        )
        arrays = net.get_weights()
        arrays.update({f"{_OPTIMIZER}{i:04d}": v.numpy() for i, v in enumerate(optimizer.variables)})
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "space": {"name": config.space.name, "options": _plain(dict(config.space.options))},
            "task": _task_doc(config, data),
            "epoch": epoch,
            "epochs": total,
            "step": int(optimizer.iterations.numpy()),
            "steps_per_epoch": steps_per_epoch,
            "largest": str(largest),
            "smallest": str(smallest),
            "history": history,
            "config": _plain(config.as_dict()),
        }
        _write_checkpoint(folder, arrays, manifest)
    return json.loads((folder / MANIFEST).read_text())

"""Image folders as tasks: one subfolder per class (PNG or JPEG, any sizes), or ``train/`` and
``test/`` (optionally ``val/``) folders of class subfolders whose split is kept as given.

Images are resized to the task's ``input_size`` ``[H, W, C]`` (converted to grayscale for C = 1,
RGB for C = 3) and held as uint8, so memory is the images' pixel bytes; the model sees them as
float32 in [0, 1], one batch at a time. Every problem is one line naming the file or folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search_spaces import InputError

__all__ = ["IMAGE_SUFFIXES", "ImageSplits", "load_image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
# Modes PIL converts to 8-bit grayscale or RGB without choosing a value range. 16-bit and float
# images ("I", "I;16", "F") would need one, so they are refused rather than silently clipped.
_CONVERTIBLE = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_GRAY = {"1", "L", "LA", "La"}
_SKIP_HINT = "(set task.skip_bad_images: true to skip such files and count them)"


@dataclass(frozen=True)
class ImageSplits:
    """uint8 images ``(N, H, W, C)`` and int64 labels per split; ``val``/``test`` are None when
    the folder has no such split (the task then carves them with its fractions)."""

    class_names: tuple[str, ...]
    x: dict[str, np.ndarray] = field(repr=False)
    y: dict[str, np.ndarray] = field(repr=False)
    skipped: tuple[str, ...] = ()


def _visible(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if not p.name.startswith("."))


def _classes(folder: Path, where: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and (file, label) pairs of a folder with one subfolder per class."""
    entries = _visible(folder)
    loose = [p for p in entries if p.is_file()]
    dirs = [p for p in entries if p.is_dir()]
    if loose and not dirs:
        raise InputError(
            f"{where}: expected one subfolder per class holding its images, got files only ({loose[0].name!r}, ...)."
        )
    if len(dirs) < 2:
        raise InputError(
            f"{where}: expected at least 2 class subfolders, got {len(dirs)} {[d.name for d in dirs]}."
        )
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(dirs):
        inside = _visible(d)
        nested = [p for p in inside if p.is_dir()]
        if nested:
            raise InputError(
                f"{d}: expected image files of class {d.name!r}, got a folder {nested[0].name!r}."
            )
        if not inside:
            raise InputError(f"{d}: expected at least one image of class {d.name!r}, got an empty folder.")
        files += [(p, label) for p in inside]
    return [d.name for d in dirs], files


def _layout(root: Path) -> tuple[tuple[str, ...], dict[str, list[tuple[Path, int]]]]:
    """The class names and each split's files (``all`` when the folder is not split)."""
    names = {p.name for p in _visible(root) if p.is_dir()}
    if not names & {"train", "test"}:
        classes, files = _classes(root, str(root))
        return tuple(classes), {"all": files}
    if not {"train", "test"} <= names or names - set(SPLITS):
        raise InputError(
            f"{root}: expected split folders train/ and test/ (and optionally val/) only, got {sorted(names)}."
        )
    out: dict[str, list[tuple[Path, int]]] = {}
    reference: list[str] | None = None
    for split in SPLITS:
        if split not in names:
            continue
        classes, files = _classes(root / split, str(root / split))
        if reference is None:
            reference = classes
        elif classes != reference:
            missing = sorted(set(reference) - set(classes))
            extra = sorted(set(classes) - set(reference))
            raise InputError(
                f"{root / split}: expected the classes of train/ {reference}, got {classes} "
                f"(missing {missing}, extra {extra})."
            )
        out[split] = files
    return tuple(reference or ()), out


def _header(path: Path) -> tuple[tuple[int, int], str] | str:
    """(width, height) and mode from the file's header, or why it is not an image."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"a file that is not .png/.jpg/.jpeg ({path.suffix or 'no suffix'!s})"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size, img.mode
    except (UnidentifiedImageError, OSError, ValueError) as e:
        return f"a file that is not a readable image ({type(e).__name__})"


def load_image_folder(
    root: str | Path,
    input_size: Sequence[int] | None = None,
    skip_bad: bool = False,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ImageSplits:
    """Read every image of ``root`` into uint8 arrays, resized and converted to ``input_size``.

    A folder without splits is split as an ``.npz`` is (seeded permutation: test, val, train); a
    folder with ``train/`` and ``test/`` keeps them, and without ``val/`` the validation split is
    carved from ``train/`` with ``val_fraction``. The split is decided before decoding, so each
    image is written once, into its split's array."""
    from PIL import Image

    root = Path(root)
    class_names, layout = _layout(root)
    skipped: list[str] = []

    def bad(path: Path, why: str) -> None:
        if not skip_bad:
            raise InputError(f"{path}: expected a PNG or JPEG image, got {why} {_SKIP_HINT}.")
        skipped.append(str(path))

    # Pass 1: headers only (cheap), to know the count and the common shape before decoding.
    good: dict[str, list[tuple[Path, int]]] = {}
    sizes: set[tuple[int, int]] = set()
    modes: set[str] = set()
    for split, files in layout.items():
        good[split] = []
        for path, label in files:
            head = _header(path)
            if isinstance(head, str):
                bad(path, head)
                continue
            size, mode = head
            if mode not in _CONVERTIBLE:
                raise InputError(
                    f"{path}: expected an image convertible to 8-bit grayscale or RGB, got mode {mode!r} "
                    "(16-bit or float pixels: convert them to 8 bits first)."
                )
            sizes.add(size)
            modes.add(mode)
            good[split].append((path, label))
    for split, files in good.items():
        labels = {label for _, label in files}
        if len(labels) < len(class_names):
            empty = [class_names[i] for i in range(len(class_names)) if i not in labels]
            raise InputError(
                f"{root}: expected at least one readable image per class, got none for {empty} in {split}."
            )
    rng = np.random.default_rng(seed)
    if "all" in good:
        files = good.pop("all")
        order = rng.permutation(len(files))
        n_test = int(round(len(files) * test_fraction))
        n_val = int(round(len(files) * val_fraction))
        parts = {
            "test": order[:n_test],
            "val": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
        }
        good = {k: [files[i] for i in idx] for k, idx in parts.items()}
    else:
        # Folders list files class by class; training code that takes the first samples (batch
        # norm recalibration, max_train_samples) must not see only the first classes.
        good = {k: [files[i] for i in rng.permutation(len(files))] for k, files in good.items()}
    if "val" not in good:
        files = good["train"]
        order = rng.permutation(len(files))
        n_val = int(round(len(files) * val_fraction))
        good["val"] = [files[i] for i in order[:n_val]]
        good["train"] = [files[i] for i in order[n_val:]]
    if input_size is None:
        if len(sizes) > 1:
            shown = sorted(sizes)[:3]
            raise InputError(
                f"{root}: images have different sizes ({', '.join(f'{w}x{h}' for w, h in shown)}, ...); "
                "expected task.input_size: [H, W, C] to resize them to, got none."
            )
        (width, height), channels = next(iter(sizes)), (1 if modes <= _GRAY else 3)
    else:
        height, width, channels = (int(d) for d in input_size)
    pil_mode = "L" if channels == 1 else "RGB"

    # Pass 2: decode straight into one uint8 array per split (no float copy, no second copy).
    x: dict[str, np.ndarray] = {}
    y: dict[str, np.ndarray] = {}
    for split, files in good.items():
        arr = np.empty((len(files), height, width, channels), dtype=np.uint8)
        labels = np.empty(len(files), dtype=np.int64)
        n = 0
        for path, label in files:
            try:
                with Image.open(path) as img:
                    img = img.convert(pil_mode)
                    if img.size != (width, height):
                        img = img.resize((width, height), Image.Resampling.BILINEAR)
                    pixels = np.asarray(img, dtype=np.uint8)
            except (OSError, ValueError, SyntaxError) as e:
                bad(
                    path,
                    f"a corrupt image ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})",
                )
                continue
            arr[n] = pixels.reshape(height, width, channels)
            labels[n] = label
            n += 1
        x[split], y[split] = arr[:n], labels[:n]
    return ImageSplits(class_names, x, y, tuple(skipped))

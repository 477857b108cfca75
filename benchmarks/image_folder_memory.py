"""Peak resident memory of an image-folder task: 20,000 RGB images of 96x96 in class folders,
loaded (decoded into uint8 arrays) and trained for one epoch.

The images are real photos: random 96x96 crops (with flips) of scikit-learn's two sample photos
(china.jpg, flower.jpg), one class per photo, written as JPEG. The floor: peak RSS under 3 GB
while loading and during one training epoch. The uint8 pixels alone are 20,000 x 96 x 96 x 3 =
553 MB; a float32 copy would be 2.2 GB.

Usage: .venv/bin/python benchmarks/image_folder_memory.py [--images 20000] [--folder /tmp/photos96]
Writes benchmarks/results/image_folder_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    """Current resident set size (MB) from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_folder(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    photos = load_sample_images().images
    for c, name in enumerate(("china", "flower")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        image = photos[c]
        for i in range(n // 2):
            y = int(rng.integers(0, image.shape[0] - 96))
            x = int(rng.integers(0, image.shape[1] - 96))
            patch = image[y : y + 96, x : x + 96]
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            Image.fromarray(np.ascontiguousarray(patch)).save(folder / name / f"{i:05d}.jpg", quality=90)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--folder", default="/tmp/edge-nas-photos96")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    folder = Path(args.folder)
    if not folder.exists() or sum(1 for _ in folder.rglob("*.jpg")) != args.images:
        t = time.perf_counter()
        write_folder(folder, args.images)
        print(f"wrote {args.images} images in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    disk = sum(f.stat().st_size for f in folder.rglob("*.jpg"))

    from search_spaces.backend import keras

    keras()  # TensorFlow's own memory counted before the data
    base = rss_mb()
    from nas.config import TrainConfig
    from nas.data import TaskSpec, load_task
    from nas.train import train_candidate
    from search_spaces import get_space

    t = time.perf_counter()
    data = load_task(TaskSpec(data=str(folder), input_size=(96, 96, 3)))
    load_s = time.perf_counter() - t
    after_load, peak_load = rss_mb(), peak_mb()
    held = sum(a.nbytes for a in (data.x_train, data.x_val, data.x_test))
    space = get_space(
        "dsconv", {"n_blocks": 3, "filters": [16], "kernels": [3], "strides": [2], "stem_stride": 2}
    )
    arch = space.parse("f16-k3-s2+f16-k3-s2+f16-k3-s2")
    t = time.perf_counter()
    result, _ = train_candidate(space, arch, data, TrainConfig(epochs=1, batch_size=64), seed=0)
    train_s = time.perf_counter() - t
    out = {
        "images": args.images,
        "image_shape": [96, 96, 3],
        "disk_mb": disk / 2**20,
        "uint8_arrays_mb": held / 2**20,
        "float32_equivalent_mb": 4 * held / 2**20,
        "rss_after_tensorflow_mb": base,
        "rss_after_load_mb": after_load,
        "peak_rss_load_mb": peak_load,
        "peak_rss_load_and_epoch_mb": peak_mb(),
        "load_s": load_s,
        "epoch_s": train_s,
        "val_accuracy_after_1_epoch": result.accuracy,
        "splits": [len(data.y_train), len(data.y_val), len(data.y_test)],
        "floor_mb": 3 * 1024,
    }
    out["floor_met"] = out["peak_rss_load_and_epoch_mb"] < out["floor_mb"]
    results = ROOT / "benchmarks" / "results"
    (results / "image_folder_memory.json").write_text(json.dumps(out, indent=1) + "\n")
    md = [
        "# Image folder memory (benchmarks/image_folder_memory.py)",
        "",
        f"{args.images:,} JPEG photos crops of 96x96x3 in 2 class folders ({out['disk_mb']:.0f} MB on disk), "
        "`task.input_size: [96, 96, 3]`, one epoch of a 3-block dsconv network (batch 64).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| uint8 arrays held (train+val+test) | {out['uint8_arrays_mb']:.0f} MB (float32 would be {out['float32_equivalent_mb']:.0f} MB) |",
        f"| RSS after importing TensorFlow | {base:.0f} MB |",
        f"| RSS after loading the folder | {after_load:.0f} MB (peak so far {peak_load:.0f} MB) |",
        f"| **peak RSS, load + one epoch** | **{out['peak_rss_load_and_epoch_mb']:.0f} MB** (floor < 3072 MB: {'met' if out['floor_met'] else 'NOT met'}) |",
        f"| load time / epoch time | {load_s:.0f} s / {train_s:.0f} s |",
        f"| validation accuracy after 1 epoch (china vs flower) | {result.accuracy:.3f} |",
        "",
    ]
    (results / "image_folder_memory.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

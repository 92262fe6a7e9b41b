"""Data specs: the three sources, the hold-out split, downsampling, and every bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from study.errors import StudyError
from study.training.data import (
    VAL_FRACTION,
    Split,
    at_size,
    downsample,
    holdout,
    load_data,
    parse_synthetic,
    resolve_spec,
)
from study.training.synthetic import make_synthetic

SMALL = "synthetic:size=16,n=100,n_test=40"


class _Payload:
    """Unpickling this object creates `marker`: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _pickled_array(marker: Path) -> np.ndarray:
    payload = np.empty(2, dtype=object)
    payload[0] = _Payload(marker)
    payload[1] = _Payload(marker)
    return payload


# --- synthetic ----------------------------------------------------------------------------------


def test_make_synthetic_is_deterministic_and_balanced() -> None:
    images, labels = make_synthetic(30, 16, seed=3)
    again, again_labels = make_synthetic(30, 16, seed=3)
    other, _ = make_synthetic(30, 16, seed=4)
    assert images.shape == (60, 16, 16) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(images, other)
    assert (labels == 0).sum() == (labels == 1).sum() == 30
    # Not a blank canvas: the images use a wide range of grey levels.
    assert images.min() < 60 and images.max() > 150


def test_synthetic_positives_are_distinguishable() -> None:
    images, labels = make_synthetic(200, 16, seed=0)
    mean = images.reshape(len(images), -1).mean(axis=1)
    # Opacities brighten the lungs of positives on average.
    assert mean[labels == 1].mean() > mean[labels == 0].mean()


def test_load_synthetic_splits() -> None:
    data = load_data(SMALL)
    assert data.image_size == 16 and data.source == SMALL
    assert (len(data.train), len(data.val), len(data.test)) == (160, 40, 80)
    for split in (data.train, data.val, data.test):
        assert split.images.shape[1:] == (16, 16) and split.images.dtype == np.uint8
        assert (split.labels == 1).sum() == (split.labels == 0).sum()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("synthetic", {"size": 64, "n": 1000, "n_test": 200, "seed": 0}),
        ("synthetic:size=16", {"size": 16, "n": 1000, "n_test": 200, "seed": 0}),
        ("synthetic:size=32, n=50,n_test=10,seed=7",
         {"size": 32, "n": 50, "n_test": 10, "seed": 7}),
    ],
)
def test_parse_synthetic(spec: str, expected: dict[str, int]) -> None:
    assert parse_synthetic(spec) == expected


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("synthetic:colour=3", "unknown synthetic option 'colour=3'"),
        ("synthetic:size", "unknown synthetic option 'size'"),
        ("synthetic:size=big", "size must be an integer, got 'big'"),
        ("synthetic:size=2", "size must be >= 4, got 2"),
        ("synthetic:n=1", "n must be >= 5, got 1"),
        ("synthetic:seed=-1", "seed must be >= 0, got -1"),
    ],
)
def test_parse_synthetic_refuses(spec: str, match: str) -> None:
    with pytest.raises(StudyError, match=match):
        load_data(spec)


def test_different_synthetic_seed_gives_different_data() -> None:
    a = load_data("synthetic:size=8,n=10,n_test=5,seed=0")
    b = load_data("synthetic:size=8,n=10,n_test=5,seed=1")
    assert not np.array_equal(a.train.images, b.train.images)


# --- npz ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("label_shape", ["(N,)", "(N,1)"])
def test_npz_with_val_split(
    tmp_path: Path, write_npz: Callable[..., Path], label_shape: str
) -> None:
    path = write_npz(tmp_path / "d.npz", size=8, n=20, label_shape=label_shape)
    raw = np.load(path)
    data = load_data(str(path))
    assert data.image_size == 8
    np.testing.assert_array_equal(data.train.images, raw["train_images"])
    np.testing.assert_array_equal(data.val.images, raw["val_images"])
    np.testing.assert_array_equal(data.test.images, raw["test_images"])
    for split, name in ((data.train, "train"), (data.val, "val"), (data.test, "test")):
        assert split.labels.shape == (20,) and split.labels.dtype == np.int64
        np.testing.assert_array_equal(split.labels, raw[f"{name}_labels"].reshape(-1))


def test_npz_without_val_holds_out_a_stratified_seeded_fifth(
    tmp_path: Path, write_npz: Callable[..., Path]
) -> None:
    path = write_npz(tmp_path / "d.npz", size=8, n=100, val=False)
    first, second = load_data(str(path)), load_data(str(path))
    assert len(first.val) == 20 and len(first.train) == 80
    assert (first.val.labels == 0).sum() == (first.val.labels == 1).sum() == 10
    np.testing.assert_array_equal(first.val.images, second.val.images)
    np.testing.assert_array_equal(first.train.images, second.train.images)


def test_holdout_partitions_train() -> None:
    n = 50
    labels = np.array([0] * 30 + [1] * 20, dtype=np.int64)
    # Each image carries its own index, so the split can be traced.
    images = np.zeros((n, 2, 2), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)
    train, val = holdout(Split(images, labels))
    assert (val.labels == 0).sum() == round(30 * VAL_FRACTION) == 6
    assert (val.labels == 1).sum() == round(20 * VAL_FRACTION) == 4
    ids = np.concatenate([train.images[:, 0, 0], val.images[:, 0, 0]])
    assert sorted(ids.tolist()) == list(range(n))
    np.testing.assert_array_equal(labels[train.images[:, 0, 0]], train.labels)
    np.testing.assert_array_equal(labels[val.images[:, 0, 0]], val.labels)
    _, val_again = holdout(Split(images, labels))
    np.testing.assert_array_equal(val.images, val_again.images)
    _, val_other_seed = holdout(Split(images, labels), seed=1)
    assert not np.array_equal(val.images, val_other_seed.images)


def test_npz_float_images_in_range_are_accepted(
    tmp_path: Path, write_npz: Callable[..., Path]
) -> None:
    images = np.zeros((20, 8, 8), dtype=np.float32)
    images[:, 0, 0] = 254.6
    images[:, 0, 1] = 0.4
    images[:, 0, 2] = 100.0
    path = write_npz(tmp_path / "d.npz", size=8, n=20, train_images=images)
    data = load_data(str(path))
    assert data.train.images.dtype == np.uint8
    assert data.train.images[0, 0, :3].tolist() == [255, 0, 100]


@pytest.mark.parametrize("shape", [(20, 1, 8, 8), (20, 8, 8, 1)])
def test_npz_single_channel_images_accepted(
    tmp_path: Path, write_npz: Callable[..., Path], shape: tuple[int, ...]
) -> None:
    images = np.full(shape, 7, dtype=np.uint8)
    path = write_npz(tmp_path / "d.npz", size=8, n=20, train_images=images)
    assert load_data(str(path)).train.images.shape == (20, 8, 8)


# --- homework layout ----------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [True, False])
def test_homework_dir(
    tmp_path: Path, write_homework_dir: Callable[..., Path], nested: bool
) -> None:
    root = write_homework_dir(tmp_path / "hw", size=8, n=10, nested=nested)
    data = load_data(str(root))
    assert data.image_size == 8
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, 20)
    sub = "test/" if nested else ""
    expected = np.concatenate(
        [np.load(root / f"{sub}test_normal.npy"), np.load(root / f"{sub}test_pneumonia.npy")]
    )
    np.testing.assert_array_equal(data.test.images, expected)
    assert data.test.labels.tolist() == [0] * 10 + [1] * 10
    assert (data.val.labels == 0).sum() == (data.val.labels == 1).sum() == 2


def test_resolve_spec_makes_paths_absolute(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_spec("data") == str(tmp_path.resolve() / "data")
    assert resolve_spec(SMALL) == SMALL


# --- downsampling -------------------------------------------------------------------------------


def test_downsample_constant_image_stays_constant() -> None:
    images = np.full((3, 256, 256), 77, dtype=np.uint8)
    small = downsample(images, 64)
    assert small.shape == (3, 64, 64) and small.dtype == np.uint8
    assert (small == 77).all()


def test_downsample_averages_areas() -> None:
    checker = (np.indices((256, 256)).sum(axis=0) % 2 * 200).astype(np.uint8)
    assert (downsample(checker[None], 64) == 100).all()
    # Each 4x4 block of a 256 image becomes one pixel holding its mean.
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(64, 64), dtype=np.uint8)
    image = np.kron(blocks, np.ones((4, 4), dtype=np.uint8))
    np.testing.assert_array_equal(downsample(image[None], 64)[0], blocks)


@pytest.mark.parametrize("size", [16, 64])
def test_downsample_never_upsamples(size: int) -> None:
    images = np.arange(2 * 16 * 16, dtype=np.int64).reshape(2, 16, 16).astype(np.uint8)
    out = downsample(images, size)
    assert out.shape == (2, 16, 16)
    np.testing.assert_array_equal(out, images)


def test_at_size(tmp_path: Path, write_homework_dir: Callable[..., Path]) -> None:
    data = load_data(str(write_homework_dir(tmp_path / "hw", size=256, n=5)))
    assert data.image_size == 256
    small = at_size(data, 64)
    assert small.image_size == 64
    for split, full in ((small.train, data.train), (small.val, data.val),
                        (small.test, data.test)):
        assert split.images.shape == (len(full), 64, 64)
        np.testing.assert_array_equal(split.labels, full.labels)
    assert at_size(data, None) is data
    assert at_size(data, 256) is data
    assert at_size(data, 512).image_size == 256


# --- bad input ----------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(StudyError, match="no such file or folder") as info:
        load_data(str(missing))
    assert str(missing) in str(info.value)


def test_unknown_file_type(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("1,2\n")
    with pytest.raises(StudyError, match="expected 'synthetic', a folder"):
        load_data(str(path))


def test_homework_dir_missing_file(
    tmp_path: Path, write_homework_dir: Callable[..., Path]
) -> None:
    root = write_homework_dir(tmp_path / "hw")
    (root / "test" / "test_pneumonia.npy").unlink()
    with pytest.raises(StudyError, match=r"test_pneumonia\.npy: missing"):
        load_data(str(root))


def test_corrupt_npz(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(StudyError, match="not a readable .npz archive") as info:
        load_data(str(path))
    assert str(path) in str(info.value)


def test_pickled_npy_is_refused_without_running_code(
    tmp_path: Path, write_homework_dir: Callable[..., Path]
) -> None:
    # Control: the payload is live, unpickling it really creates the marker.
    control = tmp_path / "control"
    control.mkdir()
    np.save(control / "p.npy", _pickled_array(control / "ran"), allow_pickle=True)
    np.load(control / "p.npy", allow_pickle=True)
    assert (control / "ran").exists()

    marker = tmp_path / "ran"
    root = write_homework_dir(tmp_path / "hw")
    target = root / "train" / "pneumonia.npy"
    np.save(target, _pickled_array(marker), allow_pickle=True)
    with pytest.raises(StudyError, match="holds pickled objects") as info:
        load_data(str(root))
    assert str(target) in str(info.value)
    assert not marker.exists()


def test_pickled_npz_key_is_refused_without_running_code(
    tmp_path: Path, write_npz: Callable[..., Path]
) -> None:
    marker = tmp_path / "ran"
    path = write_npz(tmp_path / "d.npz", test_labels=_pickled_array(marker))
    with pytest.raises(StudyError, match="key 'test_labels' holds pickled objects") as info:
        load_data(str(path))
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("shape", [(20, 64), (20, 8, 8, 3), (20,)])
def test_npz_wrong_number_of_dimensions(
    tmp_path: Path, write_npz: Callable[..., Path], shape: tuple[int, ...]
) -> None:
    path = write_npz(tmp_path / "d.npz", train_images=np.zeros(shape, dtype=np.uint8))
    with pytest.raises(StudyError, match="images must have 3 dimensions") as info:
        load_data(str(path))
    assert "train_images" in str(info.value) and str(shape) in str(info.value)


def test_homework_wrong_number_of_dimensions(
    tmp_path: Path, write_homework_dir: Callable[..., Path]
) -> None:
    root = write_homework_dir(tmp_path / "hw")
    np.save(root / "train" / "normal.npy", np.zeros((10, 64), dtype=np.uint8))
    with pytest.raises(StudyError, match=r"normal\.npy: images must have 3 dimensions") as info:
        load_data(str(root))
    assert "(10, 64)" in str(info.value)


def test_non_square_images(tmp_path: Path, write_npz: Callable[..., Path]) -> None:
    path = write_npz(tmp_path / "d.npz", train_images=np.zeros((20, 8, 6), dtype=np.uint8))
    with pytest.raises(StudyError, match="images must be square, got 8x6"):
        load_data(str(path))


def test_homework_image_sizes_differ(
    tmp_path: Path, write_homework_dir: Callable[..., Path]
) -> None:
    root = write_homework_dir(tmp_path / "hw", size=8)
    np.save(root / "test" / "test_normal.npy", np.zeros((10, 12, 12), dtype=np.uint8))
    with pytest.raises(StudyError, match="image sizes differ between files") as info:
        load_data(str(root))
    message = str(info.value)
    assert "(8, 8)" in message and "(12, 12)" in message and "test_normal.npy" in message


def test_npz_image_sizes_differ(tmp_path: Path, write_npz: Callable[..., Path]) -> None:
    path = write_npz(tmp_path / "d.npz", size=8,
                     test_images=np.zeros((20, 12, 12), dtype=np.uint8))
    with pytest.raises(StudyError, match="image sizes differ between splits") as info:
        load_data(str(path))
    assert "(8, 8)" in str(info.value) and "(12, 12)" in str(info.value)


def test_images_and_labels_of_different_lengths(
    tmp_path: Path, write_npz: Callable[..., Path]
) -> None:
    labels = np.tile(np.array([0, 1], dtype=np.uint8), 10)[:19]
    path = write_npz(tmp_path / "d.npz", n=20, train_labels=labels)
    with pytest.raises(StudyError, match="20 images but 19 labels") as info:
        load_data(str(path))
    assert "train_labels" in str(info.value)


@pytest.mark.parametrize(
    ("labels", "found"),
    [
        (np.array([0, 1, 2, 1] * 5, dtype=np.int64), "[0, 1, 2]"),
        (np.array([0, -1] * 10, dtype=np.int64), "[-1, 0]"),
        (np.array([0.0, 0.5] * 10, dtype=np.float32), "[0.0, 0.5]"),
    ],
)
def test_labels_outside_0_1(
    tmp_path: Path, write_npz: Callable[..., Path], labels: np.ndarray, found: str
) -> None:
    path = write_npz(tmp_path / "d.npz", n=20, val_labels=labels)
    with pytest.raises(StudyError, match="labels must be 0 or 1") as info:
        load_data(str(path))
    assert "val_labels" in str(info.value) and found in str(info.value)


def test_labels_with_nan(tmp_path: Path, write_npz: Callable[..., Path]) -> None:
    labels = np.array([0.0, 1.0] * 10)
    labels[3] = np.nan
    path = write_npz(tmp_path / "d.npz", n=20, train_labels=labels)
    with pytest.raises(StudyError, match=r"train_labels\]: labels contain NaN or inf"):
        load_data(str(path))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_pixels(
    tmp_path: Path, write_npz: Callable[..., Path], bad: float
) -> None:
    images = np.full((20, 8, 8), 10.0)
    images[4, 2, 2] = bad
    images[5, 1, 1] = bad
    path = write_npz(tmp_path / "d.npz", n=20, test_images=images)
    with pytest.raises(StudyError, match="images contain 2 NaN or inf pixels") as info:
        load_data(str(path))
    assert "test_images" in str(info.value)


def test_nan_pixels_in_homework_file(
    tmp_path: Path, write_homework_dir: Callable[..., Path]
) -> None:
    root = write_homework_dir(tmp_path / "hw", nested=False)
    images = np.full((10, 8, 8), 3.0, dtype=np.float32)
    images[0, 0, 0] = np.nan
    np.save(root / "pneumonia.npy", images)
    with pytest.raises(StudyError, match=r"pneumonia\.npy: images contain 1 NaN or inf"):
        load_data(str(root))


@pytest.mark.parametrize(("low", "high", "shown"), [(-1.0, 10.0, "[-1, 10]"),
                                                    (0.0, 300.0, "[0, 300]")])
def test_pixels_outside_0_255(
    tmp_path: Path, write_npz: Callable[..., Path], low: float, high: float, shown: str
) -> None:
    images = np.full((20, 8, 8), 5.0)
    images[0, 0, 0], images[1, 0, 0] = low, high
    path = write_npz(tmp_path / "d.npz", n=20, train_images=images)
    with pytest.raises(StudyError, match="pixel values must lie in") as info:
        load_data(str(path))
    assert shown in str(info.value) and "train_images" in str(info.value)


def test_npz_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, train_images=np.zeros((4, 8, 8), dtype=np.uint8),
             train_labels=np.array([0, 1, 0, 1]))
    with pytest.raises(StudyError, match="missing key 'test_images'") as info:
        load_data(str(path))
    assert str(path) in str(info.value)


def test_class_with_no_examples(tmp_path: Path, write_npz: Callable[..., Path]) -> None:
    path = write_npz(tmp_path / "d.npz", n=20, test_labels=np.zeros(20, dtype=np.uint8))
    with pytest.raises(StudyError, match=r"\(test split\): class pneumonia \(1\) has no") as info:
        load_data(str(path))
    assert str(path) in str(info.value)


def test_empty_class_file(tmp_path: Path, write_homework_dir: Callable[..., Path]) -> None:
    root = write_homework_dir(tmp_path / "hw")
    np.save(root / "train" / "normal.npy", np.zeros((0, 8, 8), dtype=np.uint8))
    with pytest.raises(StudyError, match=r"normal\.npy: holds no images"):
        load_data(str(root))


@pytest.mark.parametrize("keep", [20, -100])
def test_truncated_npy(
    tmp_path: Path, write_homework_dir: Callable[..., Path], keep: int
) -> None:
    root = write_homework_dir(tmp_path / "hw")
    path = root / "test" / "test_normal.npy"
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(StudyError, match="not a readable .npy array") as info:
        load_data(str(root))
    assert str(path) in str(info.value)


def test_garbage_npy(tmp_path: Path, write_homework_dir: Callable[..., Path]) -> None:
    root = write_homework_dir(tmp_path / "hw")
    path = root / "train" / "normal.npy"
    path.write_bytes(b"this is not an array")
    with pytest.raises(StudyError) as info:
        load_data(str(root))
    assert str(path) in str(info.value)

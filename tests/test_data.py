"""Tests for harness.data: the embedded digits split, --subset, augmentation, the on-device loader,
missing-data errors, the npz loader and (when present) the shared real data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness import data as hdata
from harness.data import DeviceLoader, augment, dataset_names, load_dataset
from harness.errors import DataError, LambenchError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_SUBSET = SHARED_DATA / "cifar10-subset"
FASHION = SHARED_DATA / "fashion-mnist"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# --- 1. digits --------------------------------------------------------------------------------------------------
def test_digits_shapes_and_info(digits):
    d = digits
    assert d.x_train.dtype == torch.uint8 and d.x_test.dtype == torch.uint8
    assert d.y_train.dtype == torch.int64 and d.y_test.dtype == torch.int64
    assert tuple(d.x_train.shape) == (1438, 1, 8, 8)
    assert tuple(d.x_test.shape) == (359, 1, 8, 8)
    assert len(d.y_train) == 1438 and len(d.y_test) == 359
    assert set(d.y_train.tolist()) == set(range(10)) and set(d.y_test.tolist()) == set(range(10))
    assert d.x_train.max().item() == 255 and d.x_train.min().item() == 0
    info = d.info
    assert (info.name, info.num_classes, info.channels, info.size) == ("digits", 10, 1, 8)
    assert (info.eps, info.pad, info.flip) == (0.1, 1, False)
    assert len(info.mean) == 1 and len(info.std) == 1
    assert info.mean[0] == pytest.approx(d.x_train.double().mean().item() / 255, abs=1e-4)
    assert info.std[0] == pytest.approx(d.x_train.double().std(unbiased=False).item() / 255, abs=1e-4)


def test_digits_split_is_deterministic_disjoint_and_complete(digits):
    again = load_dataset("digits")
    for a, b in [(digits.x_train, again.x_train), (digits.y_train, again.y_train),
                 (digits.x_test, again.x_test), (digits.y_test, again.y_test)]:
        assert torch.equal(a, b)
    # train + test is exactly the 1,797 sklearn digits (as a multiset of (image, label) rows): the split
    # neither duplicates nor drops an example
    from sklearn.datasets import load_digits
    sk = load_digits()
    ref = np.concatenate([np.round(sk.images * (255 / 16)).astype(np.uint8).reshape(len(sk.target), -1),
                          sk.target[:, None].astype(np.uint8)], 1)
    ours = np.concatenate([
        torch.cat([digits.x_train, digits.x_test]).reshape(1797, -1).numpy(),
        torch.cat([digits.y_train, digits.y_test]).numpy()[:, None].astype(np.uint8)], 1)
    assert ours.shape == ref.shape == (1797, 65)
    ref_sorted, ours_sorted = ref[np.lexsort(ref.T[::-1])], ours[np.lexsort(ours.T[::-1])]
    assert np.array_equal(ref_sorted, ours_sorted)
    # the split is shuffled, not the first 80% of the file
    assert not np.array_equal(ours[:1438], ref[:1438])


# --- 2. --subset -------------------------------------------------------------------------------------------------
def test_subset_limits_training_set_only(digits):
    d = load_dataset("digits", subset=100)
    assert tuple(d.x_train.shape) == (100, 1, 8, 8) and len(d.y_train) == 100
    assert torch.equal(d.x_train, digits.x_train[:100]) and torch.equal(d.y_train, digits.y_train[:100])
    assert torch.equal(d.x_test, digits.x_test) and torch.equal(d.y_test, digits.y_test)
    assert d.info.num_classes == 10
    big = load_dataset("digits", subset=10_000)
    assert len(big.x_train) == 1438


# --- 3. augment ------------------------------------------------------------------------------------------------
def random_batch(b=32, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (b, c, h, w), generator=g, dtype=torch.uint8)   # no zeros: padding is visible


def test_augment_identity_without_pad_and_flip():
    x = random_batch()
    out = augment(x, pad=0, flip=False, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, x)


def test_augment_flip_gives_input_or_mirror():
    x = random_batch(b=64)
    out = augment(x, pad=0, flip=True, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert same.any() and mirrored.any()     # both happen (p = 0.5 each)


def _matching_shifts(out_img, padded_img, pad, h, w):
    return [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
            if torch.equal(out_img, padded_img[:, dy:dy + h, dx:dx + w])]


@pytest.mark.parametrize("pad", [1, 4])
def test_augment_crop_is_a_shift_of_the_zero_padded_input(pad):
    x = random_batch(b=24, h=8, w=6)
    out = augment(x, pad=pad, flip=False, generator=torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    shifts = []
    for i in range(len(x)):
        found = _matching_shifts(out[i], padded[i], pad, 8, 6)
        assert found, f"image {i} is not a crop of its padded input"
        shifts.append(found[0])
    assert len(set(shifts)) > 3                          # crops are random, not all the same
    assert any(s != (pad, pad) for s in shifts)          # and not all the identity crop


def test_augment_crop_and_flip_together():
    pad = 2
    x = random_batch(b=32)
    out = augment(x, pad=pad, flip=True, generator=torch.Generator().manual_seed(2))
    padded = F.pad(x, (pad, pad, pad, pad))
    flipped = 0
    for i in range(len(x)):
        plain = _matching_shifts(out[i], padded[i], pad, 8, 8)
        mirror = _matching_shifts(out[i].flip(2), padded[i], pad, 8, 8)
        assert plain or mirror
        flipped += bool(mirror) and not plain
    assert 0 < flipped < len(x)


def test_augment_is_reproducible_with_generator():
    x = random_batch()
    a = augment(x, 4, True, torch.Generator().manual_seed(7))
    b = augment(x, 4, True, torch.Generator().manual_seed(7))
    c = augment(x, 4, True, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- 4. DeviceLoader ---------------------------------------------------------------------------------------------
def indexed_data(n, shape=(1, 4, 4)):
    """Image i is constant i + 1 (so it survives zero padding as its max), label i."""
    x = (torch.arange(n, dtype=torch.int64) + 1).to(torch.uint8).view(n, *[1] * len(shape)).expand(n, *shape)
    return x.contiguous(), torch.arange(n)


def test_device_loader_eval_mode_yields_everything_once_in_order():
    x, y = indexed_data(103)
    loader = DeviceLoader(x, y, batch_size=10)
    assert len(loader) == 11
    batches = list(loader)
    assert len(batches) == 11
    assert [len(b[1]) for b in batches] == [10] * 10 + [3]
    xs = torch.cat([b[0] for b in batches])
    ys = torch.cat([b[1] for b in batches])
    assert xs.dtype == torch.float32
    assert torch.equal(ys, torch.arange(103))
    assert xs.min().item() >= 0 and xs.max().item() <= 1
    torch.testing.assert_close(xs, x.float() / 255, atol=0, rtol=0)
    assert list(loader)[0][1].tolist() == list(range(10))     # a second pass is identical


def test_device_loader_eval_full_range_values():
    x = torch.tensor([0, 1, 128, 255], dtype=torch.uint8).view(4, 1, 1, 1)
    (xb, yb), = list(DeviceLoader(x, torch.arange(4), batch_size=8))
    assert xb.view(-1).tolist() == pytest.approx([0.0, 1 / 255, 128 / 255, 1.0], abs=1e-7)
    assert xb.dtype == torch.float32 and yb.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("pad,flip", [(0, False), (2, True)])
def test_device_loader_train_mode_shuffles_drops_last_and_keeps_pairs(pad, flip):
    x, y = indexed_data(103)
    loader = DeviceLoader(x, y, batch_size=10, train=True, pad=pad, flip=flip,
                          generator=torch.Generator().manual_seed(0))
    assert len(loader) == 10
    seen = []
    for xb, yb in loader:
        assert xb.shape == (10, 1, 4, 4) and xb.dtype == torch.float32
        assert 0 <= xb.min().item() and xb.max().item() <= 1
        # labels stay with their images: image i has max pixel (i + 1) / 255 even after crop and flip
        assert torch.equal(torch.round(xb.flatten(1).amax(1) * 255).long(), yb + 1)
        seen += yb.tolist()
    assert len(seen) == 100 == len(set(seen))
    assert seen != sorted(seen)                      # shuffled
    second = [int(v) for _, yb in loader for v in yb]
    assert second != seen                            # a new order every epoch


def test_device_loader_drop_last_flags():
    x, y = indexed_data(25)
    assert len(DeviceLoader(x, y, 10, train=True, drop_last=False)) == 3
    assert sum(len(b) for _, b in DeviceLoader(x, y, 10, train=True, drop_last=False)) == 25
    assert len(DeviceLoader(x, y, 10, train=False, drop_last=True)) == 2
    assert [len(b) for _, b in DeviceLoader(x, y, 10, train=False, drop_last=True)] == [10, 10]
    # fewer examples than one batch: still one (partial) batch rather than none
    x5, y5 = indexed_data(5)
    assert [len(b) for _, b in DeviceLoader(x5, y5, 10, train=True)] == [5]


# --- 5. missing data -------------------------------------------------------------------------------------------
def _assert_helpful(err: DataError):
    msg = str(err)
    assert isinstance(err, LambenchError)
    assert "--data-root" in msg
    assert "\n" not in msg


@pytest.fixture
def offline(monkeypatch):
    """Simulate an offline machine so that no test ever downloads CIFAR-10, even where the network is up."""
    import torchvision.datasets.cifar as tv_cifar
    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", no_network)
    return calls


def test_missing_cifar10_raises_data_error(offline, tmp_path):
    """A root that does not exist (a typo) is an error naming it; nothing is downloaded or created there."""
    root = tmp_path / "no-such-root"
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", root=str(root))
    _assert_helpful(exc.value)
    assert "'cifar10'" in str(exc.value) and str(root) in str(exc.value)
    assert not offline, "a download was tried into a root that does not exist"
    assert not root.exists()


def test_missing_cifar10_in_empty_folder(offline, tmp_path):
    """An existing but empty root: torchvision's download is tried (and fails offline), then a clear error."""
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", root=str(tmp_path))
    _assert_helpful(exc.value)
    assert str(tmp_path) in str(exc.value)
    assert offline, "torchvision's download path was never tried"


@pytest.mark.parametrize("name", ["npz", "cifar10", "fashion_mnist"])
def test_no_root_and_no_env_raises_data_error(name, monkeypatch):
    monkeypatch.delenv(hdata.ENV_ROOT, raising=False)
    with pytest.raises(DataError) as exc:
        load_dataset(name, root=None)
    _assert_helpful(exc.value)
    assert "LAMBENCH_DATA" in str(exc.value)


def test_npz_folder_without_files_raises_data_error(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset("npz", root=str(tmp_path))
    _assert_helpful(exc.value)
    assert "train.npz" in str(exc.value)


def test_unknown_dataset_lists_known_names():
    names = dataset_names()
    assert {"digits", "npz", "cifar10", "cifar100", "svhn", "fashion_mnist"} <= set(names)
    with pytest.raises(DataError) as exc:
        load_dataset("imagenet_tiny_nope")
    msg = str(exc.value)
    assert "imagenet_tiny_nope" in msg and "\n" not in msg
    for n in names:
        assert n in msg


# --- 6. npz loader ---------------------------------------------------------------------------------------------
def _write_npz(folder: Path, n_train=12, n_test=5, h=6, w=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (h, w, c) if c else (h, w)
    xs = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        y = rng.integers(0, 4, size=n)
        y[:4] = np.arange(4)
        np.savez(folder / f"{split}.npz", x=x, y=y)
        xs[split] = (x, y)
    return xs


def test_npz_loader_converts_to_nchw(tmp_path):
    raw = _write_npz(tmp_path)
    d = load_dataset("npz", root=str(tmp_path))
    assert tuple(d.x_train.shape) == (12, 3, 6, 5) and tuple(d.x_test.shape) == (5, 3, 6, 5)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert np.array_equal(d.x_train.numpy(), raw["train"][0].transpose(0, 3, 1, 2))
    assert np.array_equal(d.x_test.numpy(), raw["test"][0].transpose(0, 3, 1, 2))
    assert np.array_equal(d.y_train.numpy(), raw["train"][1]) and np.array_equal(d.y_test.numpy(), raw["test"][1])
    info = d.info
    assert (info.num_classes, info.channels, info.size) == (4, 3, 6)
    assert (info.eps, info.pad, info.flip) == (8 / 255, 4, True)
    expected_mean = raw["train"][0].reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(info.mean, expected_mean, atol=1e-4)


def test_npz_loader_finds_subfolder_env_var_and_grey(tmp_path, monkeypatch):
    _write_npz(tmp_path / "cifar10-subset", n_train=7)
    monkeypatch.setenv(hdata.ENV_ROOT, str(tmp_path))
    d = load_dataset("npz")                          # root from $LAMBENCH_DATA, file in the known subfolder
    assert len(d.x_train) == 7 and d.x_train.shape[1] == 3
    grey = tmp_path / "grey"
    raw = _write_npz(grey, c=0)
    d = load_dataset("npz", root=str(grey))
    assert tuple(d.x_train.shape) == (12, 1, 6, 5) and d.info.channels == 1
    assert np.array_equal(d.x_train[:, 0].numpy(), raw["train"][0])


# --- 7. real shared data (skipped when absent) ------------------------------------------------------------------
_SKIP = f"real data not found at {SHARED_DATA}; see ../shared/data/README.md"


@pytest.mark.skipif(not (CIFAR_SUBSET / "train.npz").is_file(), reason=_SKIP)
def test_real_cifar10_subset():
    d = load_dataset("npz", root=str(CIFAR_SUBSET))
    assert tuple(d.x_train.shape) == (5438, 3, 32, 32) and tuple(d.x_test.shape) == (1017, 3, 32, 32)
    assert len(d.y_train) == 5438 and len(d.y_test) == 1017
    assert d.info.num_classes == 10 and d.info.channels == 3 and d.info.size == 32
    assert set(d.y_test.tolist()) == set(range(10))
    assert all(0.3 < m < 0.6 for m in d.info.mean)   # natural images, not noise or zeros


@pytest.mark.skipif(not (FASHION / "FashionMNIST" / "raw").is_dir(), reason=_SKIP)
def test_real_fashion_mnist():
    d = load_dataset("fashion_mnist", root=str(FASHION))
    assert tuple(d.x_train.shape) == (60000, 1, 28, 28) and tuple(d.x_test.shape) == (10000, 1, 28, 28)
    assert d.x_train.dtype == torch.uint8
    assert d.info.eps == 0.1 and d.info.num_classes == 10 and d.info.channels == 1 and d.info.size == 28
    assert torch.equal(torch.bincount(d.y_train), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(d.y_test), torch.full((10,), 1000))
    assert d.info.mean[0] == pytest.approx(0.2860, abs=1e-3)    # the well-known Fashion-MNIST mean


def _one_line(err: DataError) -> str:
    msg = str(err)
    assert isinstance(err, LambenchError) and "\n" not in msg
    return msg


@pytest.mark.parametrize("damage, says", [
    ("not_zip", "not a readable .npz"),
    ("no_x", "no 'x' array"),
    ("float_x", "is not pixels 0..255"),
    ("npy", "not a readable .npz"),
    ("text_x", "is not pixels 0..255"),
    ("huge_label", "it must hold"),
    ("flat_x", "it must hold"),
    ("negative_label", "labels must be 0..K-1"),
    ("few_labels", "as many of each"),
    ("other_shape", "both splits must have one shape"),
])
def test_npz_that_does_not_fit_is_a_one_line_error(tmp_path, damage, says):
    """Each way an npz can be wrong is refused when loading, naming what is wrong; none of them trains (a
    float x in [0, 1] was cast to all-zero uint8 images before, and a test split of another shape trained)."""
    raw = _write_npz(tmp_path)
    x, y = raw["test"]
    edits = {"not_zip": lambda: (tmp_path / "test.npz").write_bytes(b"not a zip"),
             "no_x": lambda: np.savez(tmp_path / "test.npz", images=x, y=y),
             "float_x": lambda: np.savez(tmp_path / "test.npz", x=x / 255.0, y=y),
             "text_x": lambda: np.savez(tmp_path / "test.npz", x=x.astype(str), y=y),
             "huge_label": lambda: np.savez(tmp_path / "test.npz", x=x, y=y.astype(float) * 1e20),
             "npy": lambda: np.save((tmp_path / "test.npz").open("wb"), x),  # one array under an .npz name
             "flat_x": lambda: np.savez(tmp_path / "test.npz", x=x.reshape(-1), y=y),
             "negative_label": lambda: np.savez(tmp_path / "test.npz", x=x, y=y - 1),
             "few_labels": lambda: np.savez(tmp_path / "test.npz", x=x, y=y[:-1]),
             "other_shape": lambda: np.savez(tmp_path / "test.npz", x=x[:, :4], y=y)}
    edits[damage]()
    with pytest.raises(DataError) as exc:
        load_dataset("npz", root=str(tmp_path))
    assert says in _one_line(exc.value)


@pytest.mark.parametrize("cut", ["short_gz", "junk"])
def test_damaged_fashion_mnist_file_is_a_one_line_error(tmp_path, cut):
    """A Fashion-MNIST file cut short (gzip) or holding junk names the file and the fix."""
    import gzip
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((3, 4, 4), np.uint8)
    idx = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape) + images.tobytes()
    labels = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([0, 1, 2])
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx))
        (raw / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    assert load_dataset("fashion_mnist", root=str(tmp_path)).x_train.shape == (3, 1, 4, 4)  # whole: it loads
    bad = raw / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(idx)[:-12] if cut == "short_gz" else gzip.compress(b"\x00\x00\x08\x03junk"))
    with pytest.raises(DataError) as exc:
        load_dataset("fashion_mnist", root=str(tmp_path))
    msg = _one_line(exc.value)
    assert str(bad) in msg and "damaged" in msg


def test_npz_of_whole_pixels_in_another_type_loads(tmp_path):
    """Pixels 0..255 stored as int64 or as whole floats, labels as whole floats: the same data as uint8."""
    raw = _write_npz(tmp_path)
    x, y = raw["test"]
    expected = load_dataset("npz", root=str(tmp_path))
    np.savez(tmp_path / "test.npz", x=x.astype(np.int64), y=y.astype(np.float32))
    assert torch.equal(load_dataset("npz", root=str(tmp_path)).x_test, expected.x_test)
    np.savez(tmp_path / "test.npz", x=x.astype(np.float32), y=y)
    d = load_dataset("npz", root=str(tmp_path))
    assert torch.equal(d.x_test, expected.x_test) and torch.equal(d.y_test, expected.y_test)


"""Datasets: a registry of loaders, all kept on the device as uint8 and augmented there per batch.

Every loader returns uint8 arrays ``x [N, H, W, C]`` and int labels ``y``. Inputs reach models in [0, 1];
normalisation lives inside the model (``models.Normalize``), so attacks work in pixel space.
Data is read from ``--data-root`` or ``$LAMBENCH_DATA``; nothing is downloaded unless torchvision can.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError
from .store import digest

ENV_ROOT = "LAMBENCH_DATA"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps: float          # the default L-inf budget used in the literature for this dataset
    pad: int            # random-crop padding (0: no crop)
    flip: bool          # random horizontal flip


@dataclass
class Dataset:
    info: DatasetInfo
    x_train: torch.Tensor   # uint8 [N, C, H, W]
    y_train: torch.Tensor   # int64 [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    fingerprint: str = ""   # digest of the four arrays as loaded (a job's results depend on the data's content)

    def to(self, device) -> "Dataset":
        return Dataset(self.info, *(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)),
                       self.fingerprint)


_LOADERS: dict[str, Callable] = {}
_DEFAULTS: dict[str, dict] = {}


def register_dataset(name: str, **defaults):
    def deco(fn):
        _LOADERS[name] = fn
        _DEFAULTS[name] = defaults
        return fn
    return deco


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


def dataset_eps(name: str, eps: float | None = None) -> float:
    """The budget a job on ``name`` uses: ``eps`` when given, else the dataset's default (reads no data)."""
    if eps is not None:
        return eps
    if name not in _DEFAULTS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    return _DEFAULTS[name]["eps"]


def data_root(root: str | None) -> Path | None:
    root = root or os.environ.get(ENV_ROOT)
    return Path(root).expanduser() if root else None


def _missing(name: str, root: Path | None, detail: str = "") -> DataError:
    where = f"under {root}" if root else "(no --data-root given and $LAMBENCH_DATA unset)"
    extra = f": {detail}" if detail else ""
    return DataError(f"dataset {name!r} not found {where}{extra}; point --data-root (or $LAMBENCH_DATA) at a folder holding it")


def _candidates(root: Path, *subdirs: str) -> list[Path]:
    return [root] + [root / s for s in subdirs]


# --- loaders -------------------------------------------------------------------------------------------------
@register_dataset("digits", eps=0.1, pad=1, flip=False)
def _digits(root):
    # scikit-learn's 1,797 real 8x8 handwritten digits ship inside the package: no download ever.
    # Pixel values 0..16 are scaled to uint8 0..255. eps = 0.1 (same budget as the MNIST family).
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))  # fixed, seeded 80/20 split
    n_test = len(y) // 5
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _npz(name, root, *subdirs):
    if root is None:
        raise _missing(name, root)
    for folder in _candidates(root, *subdirs):
        if (folder / "train.npz").is_file() and (folder / "test.npz").is_file():
            return (*_npz_split(folder / "train.npz"), *_npz_split(folder / "test.npz"))
    raise _missing(name, root, "expected train.npz and test.npz with x uint8 [N,H,W,C] and y")


def _npz_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """x uint8 [N, H, W, C] (or [N, H, W]) and y of one .npz; anything else is a one-line error."""
    want = "x [N,H,W,C] of pixels 0..255 (uint8, or whole numbers of another type) and y integer labels"
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):  # an .npy file under an .npz name
            raise ValueError("one array, not an archive")
        with f:
            x, y = f["x"], f["y"]
    except KeyError as exc:
        raise DataError(f"{path} has no {exc.args[0].split()[0]!r} array; it must hold {want}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz ({type(exc).__name__}); it must hold {want}") from None
    if x.ndim not in (3, 4) or y.ndim != 1 or not _whole(y, -2**31, 2**31):  # (negative: named by _check)
        raise DataError(f"{path}: x {x.dtype}{list(x.shape)} and y {y.dtype}{list(y.shape)}; it must hold {want}")
    if x.dtype != np.uint8 and not _whole(x, 0, 255):  # floats in [0, 1] would all become 0
        span = f", {x.min():g}..{x.max():g}" if x.size and np.issubdtype(x.dtype, np.number) else ""
        raise DataError(f"{path}: x ({x.dtype}{span}) is not pixels 0..255; store them as uint8, e.g. "
                        f"np.round(x * 255).astype(np.uint8) for values in [0, 1]")
    return (x[..., None] if x.ndim == 3 else x).astype(np.uint8, copy=False), y.astype(np.int64)


def _whole(a: np.ndarray, lo: float, hi: float) -> bool:
    """Whether ``a`` holds whole numbers in ``lo``..``hi`` of an integer or float type."""
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        return False
    if a.size == 0:
        return True
    whole = bool(np.all(np.mod(a, 1) == 0)) if np.issubdtype(a.dtype, np.floating) else True
    return whole and lo <= a.min() and a.max() <= hi


@register_dataset("npz", eps=8 / 255, pad=4, flip=True)
def _npz_folder(root):
    return _npz("npz", root, "cifar10-subset")


def _torchvision(name, cls_name, root, subdirs, split_kw):
    import torchvision
    if root is None:
        raise _missing(name, root)
    cls = getattr(torchvision.datasets, cls_name)
    # Read what is there; only then try a download, into the root itself and only if it exists
    # (so a mistyped root never gets folders created or 170 MB downloaded into it).
    attempts = [(folder, False) for folder in _candidates(root, *subdirs)] + [(root, True)] * root.is_dir()
    for folder, download in attempts:
        try:
            parts = [cls(str(folder), download=download, **split_kw(train)) for train in (True, False)]
        except Exception:  # torchvision raises RuntimeError, URLError, OSError, ...
            continue
        out = []
        for ds in parts:
            x = np.asarray(ds.data)
            if x.ndim == 3:
                x = x[..., None]
            if x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):  # SVHN stores [N, C, H, W]
                x = x.transpose(0, 2, 3, 1)
            y = np.asarray(getattr(ds, "targets", getattr(ds, "labels", None)), dtype=np.int64)
            out += [x.astype(np.uint8), y]
        return tuple(out)
    raise _missing(name, root, "torchvision could not read or download it")


@register_dataset("cifar10", eps=8 / 255, pad=4, flip=True)
def _cifar10(root):
    return _torchvision("cifar10", "CIFAR10", root, ("cifar10", "cifar-10"), lambda t: {"train": t})


@register_dataset("cifar100", eps=8 / 255, pad=4, flip=True)
def _cifar100(root):
    return _torchvision("cifar100", "CIFAR100", root, ("cifar100", "cifar-100"), lambda t: {"train": t})


@register_dataset("svhn", eps=8 / 255, pad=4, flip=False)  # flipping digits changes their meaning
def _svhn(root):
    return _torchvision("svhn", "SVHN", root, ("svhn",), lambda t: {"split": "train" if t else "test"})


def _read_idx_gz(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST family), gzipped or not, without unpacking it next to itself."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()  # writable
    except (OSError, EOFError, ValueError, IndexError) as exc:  # cut short, not gzip, not IDX
        raise DataError(f"{path} is damaged ({type(exc).__name__}: not a whole IDX file); replace it with the "
                        f"original") from None


@register_dataset("fashion_mnist", eps=0.1, pad=2, flip=True)
def _fashion_mnist(root):
    # Reads torchvision's layout (FashionMNIST/raw/*-idx?-ubyte[.gz]) directly, so a read-only copy works.
    if root is not None:
        for folder in _candidates(root, "fashion-mnist", "fashion_mnist"):
            raw = folder / "FashionMNIST" / "raw"
            found = {}
            for split in ("train", "t10k"):
                for kind, n in (("images", 3), ("labels", 1)):
                    stem = raw / f"{split}-{kind}-idx{n}-ubyte"
                    path = next((p for p in (stem, stem.with_name(stem.name + ".gz")) if p.is_file()), None)
                    if path is not None:
                        found[split, kind] = _read_idx_gz(path)
            if len(found) == 4:
                return (found["train", "images"][..., None], found["train", "labels"].astype(np.int64),
                        found["t10k", "images"][..., None], found["t10k", "labels"].astype(np.int64))
    return _torchvision("fashion_mnist", "FashionMNIST", root, ("fashion-mnist", "fashion_mnist"),
                        lambda t: {"train": t})


def load_dataset(name: str, root: str | None = None, subset: int | None = None) -> Dataset:
    """Load ``name`` as uint8 tensors [N, C, H, W] on the CPU (call ``.to(device)`` once)."""
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    x_tr, y_tr, x_te, y_te = _LOADERS[name](data_root(root))
    _check(name, x_tr, y_tr, x_te, y_te)
    if subset is not None:
        if subset < 1:
            raise DataError(f"--subset must be a positive number of training examples, got {subset}")
        x_tr, y_tr = x_tr[:subset], y_tr[:subset]
    d = _DEFAULTS[name]
    scaled = x_tr.reshape(-1, x_tr.shape[-1]).astype(np.float64) / 255.0
    info = DatasetInfo(name=name, num_classes=int(max(y_tr.max(), y_te.max()) + 1), channels=x_tr.shape[-1],
                       size=x_tr.shape[1], mean=tuple(scaled.mean(0).round(4)), std=tuple(scaled.std(0).round(4)),
                       eps=d["eps"], pad=d["pad"], flip=d["flip"])

    def nchw(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    arrays = [np.ascontiguousarray(a) for a in (x_tr, y_tr, x_te, y_te)]
    return Dataset(info, nchw(x_tr), torch.from_numpy(y_tr), nchw(x_te), torch.from_numpy(y_te),
                   digest((f"{a.dtype}{a.shape}", a.data) for a in arrays))


def _check(name: str, x_tr, y_tr, x_te, y_te) -> None:
    """Training and test splits that fit together: as many labels as images, one image shape, labels >= 0."""
    for split, x, y in (("training", x_tr, y_tr), ("test", x_te, y_te)):
        if len(x) == 0 or len(x) != len(y):
            raise DataError(f"dataset {name!r}: the {split} split has {len(x)} images and {len(y)} labels; it "
                            f"needs as many of each, and at least one")
        if y.min() < 0:
            raise DataError(f"dataset {name!r}: the {split} labels include {y.min()}; labels must be 0..K-1")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"dataset {name!r}: training images are {list(x_tr.shape[1:])} (H, W, C) but test images "
                        f"{list(x_te.shape[1:])}; both splits must have one shape")


# --- on-device batching and augmentation ---------------------------------------------------------------------
def augment(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of a uint8 batch [B, C, H, W], on its device."""
    b, _, h, w = x.shape
    dev = x.device
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]      # [B,1,H,1]
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]      # [B,1,1,W]
        x = padded[torch.arange(b, device=dev)[:, None, None, None],
                   torch.arange(x.shape[1], device=dev)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(b, device=dev, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


class DeviceLoader:
    """Iterates over uint8 tensors already on the device; yields float batches in [0, 1]."""

    def __init__(self, x, y, batch_size, train=False, pad=0, flip=False, drop_last=None, generator=None):
        self.x, self.y, self.batch_size, self.train = x, y, batch_size, train
        self.pad, self.flip, self.generator = pad, flip, generator
        self.drop_last = train if drop_last is None else drop_last

    def __len__(self):
        n = len(self.x)
        return n // self.batch_size if self.drop_last and n >= self.batch_size else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.x)
        order = (torch.randperm(n, device=self.x.device, generator=self.generator) if self.train
                 else torch.arange(n, device=self.x.device))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = self.x[idx]
            if self.train:
                xb = augment(xb, self.pad, self.flip, self.generator)
            yield xb.float().div_(255), self.y[idx]

"""Fashion-MNIST: finding its IDX files on disk and loading a split.

Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", arXiv:1708.07747; 60000 train / 10000 test, 1x28x28, the project's
default dataset. Nothing is downloaded: :func:`fashion_mnist_search_dirs` lists where the four
IDX files are looked for (``data_dir``, ``$BASTION_DATA``, Debian's ``dataset-fashion-mnist``
package, the caches ``scripts/get_fashion_mnist.sh`` unpacks that package into, a torchvision
root), each as a :class:`SearchDir`; :func:`find_fashion_mnist` picks the first folder holding a
split (its :class:`~bastion.data.locate.IdxFiles`), and a miss raises a FileNotFoundError that
lists every folder looked at and how to get the data.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from bastion._validate import check_choice
from bastion.data.cache import _decode_idx_pair, _stamp
from bastion.data.dataset import SPLITS, ImageDataset, Split
from bastion.data.locate import (
    _IDX_PREFIX,
    DATA_DIR_HOWTO,
    ENV_VAR,
    IdxFiles,
    _env_dir,
    _idx_files,
    _user_folder_candidates,
)
from bastion.errors import MissingFileError

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "SearchDir",
    "fashion_mnist_search_dirs",
    "find_fashion_mnist",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the four IDX files."""

_DPKG_SUBDIR = Path("usr/share/datasets/fashion-mnist")
_CACHE_SUBDIR = Path("bastion/data/fashion-mnist")

_SOURCE_ROOT: Path | None = (
    Path(__file__).resolve().parents[3]
    if (Path(__file__).resolve().parents[3] / "pyproject.toml").is_file()
    else None
)
"""The repository root when bastion runs from a source checkout (``scripts/`` writes there)."""

_GET_FASHION_MNIST = (
    "To get Fashion-MNIST: `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs "
    f"into {DEBIAN_FASHION_MNIST_DIR}), or `bash scripts/get_fashion_mnist.sh` from the bastion "
    "repository (works without root: it unpacks that package into "
    ".cache/bastion/data/fashion-mnist/), or put the four IDX files (train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a "
    f"folder and {DATA_DIR_HOWTO}."
)

_FASHION_SUBDIRS = ("fashion-mnist", "FashionMNIST/raw", str(_DPKG_SUBDIR))


@dataclass(frozen=True)
class SearchDir:
    """A folder searched for the Fashion-MNIST IDX files.

    Args:
        path: the folder (it need not exist).
        origin: a short description of why it is searched, e.g. ``"data_dir"``,
            ``"BASTION_DATA"``, ``"user cache"``.
    """

    path: Path
    origin: str


def fashion_mnist_search_dirs(
    data_dir: str | os.PathLike[str] | None = None,
) -> list[SearchDir]:
    """The folders searched for the Fashion-MNIST IDX files, in order, with their origin.

    With ``data_dir`` only ``data_dir`` (and its ``fashion-mnist/``, ``FashionMNIST/raw/`` and
    ``usr/share/datasets/fashion-mnist/`` subfolders) is searched. Otherwise: ``$BASTION_DATA``
    (same subfolders), :data:`DEBIAN_FASHION_MNIST_DIR`, the user cache
    ``${XDG_CACHE_HOME:-~/.cache}/bastion/data/fashion-mnist/usr/share/datasets/fashion-mnist``,
    the repository cache ``./.cache/bastion/data/fashion-mnist/usr/share/datasets/fashion-mnist``
    (also under the source checkout when bastion runs from one), then the torchvision root
    ``./data/FashionMNIST/raw``.

    Returns:
        :class:`SearchDir` records (folder and origin) in search order, without duplicates.
    """
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [SearchDir(p, "data_dir") for p in _user_folder_candidates(root, *_FASHION_SUBDIRS)]
    out: list[SearchDir] = []
    env = _env_dir()
    if env is not None:
        out += [SearchDir(p, ENV_VAR) for p in _user_folder_candidates(env, *_FASHION_SUBDIRS)]
    out.append(SearchDir(Path(DEBIAN_FASHION_MNIST_DIR), "Debian package dataset-fashion-mnist"))
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache_home = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    out.append(SearchDir(cache_home / _CACHE_SUBDIR / _DPKG_SUBDIR, "user cache"))
    out.append(SearchDir(Path.cwd() / ".cache" / _CACHE_SUBDIR / _DPKG_SUBDIR, "repository cache"))
    if _SOURCE_ROOT is not None:
        out.append(
            SearchDir(_SOURCE_ROOT / ".cache" / _CACHE_SUBDIR / _DPKG_SUBDIR, "repository cache")
        )
    out.append(SearchDir(Path.cwd() / "data" / "FashionMNIST" / "raw", "torchvision root ./data"))
    seen: set[Path] = set()
    unique = []
    for d in out:
        key = d.path.absolute()
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def find_fashion_mnist(
    split: Split, data_dir: str | os.PathLike[str] | None = None
) -> IdxFiles:
    """Locate the Fashion-MNIST images and labels IDX files of ``split``.

    Args:
        split: ``"train"`` or ``"test"``.
        data_dir: a folder to use instead of the default locations.

    Returns:
        :class:`~bastion.data.locate.IdxFiles`: paths of the images file and the labels
        file (``.gz`` or plain).

    Raises:
        FileNotFoundError: with every folder looked at and how to get the data.

    Warns:
        UserWarning: ``$BASTION_DATA`` is set but holds no files, so another folder is used.
    """
    check_choice(split, SPLITS, "split")
    candidates = fashion_mnist_search_dirs(data_dir)
    for candidate in candidates:
        folder, origin = candidate.path, candidate.origin
        files = _idx_files(folder, split)
        if files is not None:
            logger.debug("Fashion-MNIST %s found in %s (%s)", split, folder, origin)
            env = _env_dir()
            if data_dir is None and env is not None and origin != ENV_VAR:
                warnings.warn(
                    f"{ENV_VAR}={env} holds no Fashion-MNIST {split} files; using {folder}",
                    stacklevel=2,
                )
            return files
    looked = "\n".join(f"  - {d.path}  ({d.origin})" for d in candidates)
    prefix = _IDX_PREFIX[split]
    raise MissingFileError(
        f"Fashion-MNIST {split} split not found: no {prefix}-images-idx3-ubyte[.gz] together "
        f"with {prefix}-labels-idx1-ubyte[.gz] in any of:\n{looked}\n{_GET_FASHION_MNIST}"
    )


def _load_fashion_mnist(split: Split, data_dir: str | os.PathLike[str] | None) -> ImageDataset:
    files = find_fashion_mnist(split, data_dir)
    x, y = _decode_idx_pair(_stamp(files.images, files.labels), len(FASHION_MNIST_CLASSES))
    logger.info("Fashion-MNIST %s: %d images from %s", split, len(y), files.images.parent)
    return ImageDataset(x, y, "fashion-mnist", len(FASHION_MNIST_CLASSES), FASHION_MNIST_CLASSES)

"""Where data files are looked for, shared by the loaders that read from folders.

``$BASTION_DATA`` (:data:`ENV_VAR`), a user folder and its subfolders, and the file names of
the (images, labels) IDX pair of a split, plain or gzipped. Nothing here reads a file's
contents; that is :mod:`bastion.data.idx` and :mod:`bastion.data.cache`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "BASTION_DATA"
"""Environment variable naming a data folder (the files themselves, or a parent of them)."""

DATA_DIR_HOWTO = (
    "give the folder as data_dir (`data_dir: FOLDER` in the run config, `--set "
    f"data_dir=FOLDER` on the command line, or load_dataset(..., data_dir=FOLDER)), or set "
    f"the environment variable {ENV_VAR}=FOLDER"
)
"""How to point bastion at a data folder: the options that exist (config key, ``--set``,
library argument, environment variable), quoted by every "not found" message."""

_IDX_PREFIX: dict[str, str] = {"train": "train", "test": "t10k"}


def _env_dir() -> Path | None:
    value = os.environ.get(ENV_VAR, "")
    return Path(value).expanduser() if value else None


def _user_folder_candidates(root: Path, *subdirs: str) -> list[Path]:
    """``root`` itself, then the given subfolders of it."""
    return [root, *(root / s for s in subdirs)]


@dataclass(frozen=True)
class IdxFiles:
    """The two IDX files of one split of an image dataset.

    Args:
        images: the images file (``*-images-idx3-ubyte``, optionally ``.gz``): uint8
            ``[N, H, W]`` pixels.
        labels: the labels file (``*-labels-idx1-ubyte``, optionally ``.gz``): uint8 ``[N]``
            class indices.
    """

    images: Path
    labels: Path


def _idx_files(folder: Path, split: str) -> IdxFiles | None:
    """The images and labels IDX files of ``split`` in ``folder``, plain or gzipped."""
    found: list[Path] = []
    for kind, nd in (("images", 3), ("labels", 1)):
        base = f"{_IDX_PREFIX[split]}-{kind}-idx{nd}-ubyte"
        path = next((folder / f for f in (base, base + ".gz") if (folder / f).is_file()), None)
        if path is None:
            return None
        found.append(path)
    return IdxFiles(images=found[0], labels=found[1])

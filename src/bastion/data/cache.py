"""The per-process cache of decoded data files, keyed on file stamps.

A stamp (:func:`_stamp`) is the resolved path, size and modification time of each file, so a
file replaced on disk is read again while loading an unchanged one twice is instant. The
loaders pass a stamp as the first argument of their ``functools.lru_cache``-d decoders; the
one shared by Fashion-MNIST and MNIST, :func:`_decode_idx_pair`, lives here. Cached tensors
are shared between the datasets returned, so treat them as read-only.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from bastion.data.idx import IdxFormatError, read_idx

logger = logging.getLogger(__name__)


def _stamp(*paths: Path) -> tuple[tuple[str, int, int], ...]:
    """Cache key: resolved path, size and mtime of each file (so a replaced file is re-read)."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _decode_idx_pair(
    key: tuple[tuple[str, int, int], ...], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an (images, labels) IDX pair to float32 [N, 1, H, W] in [0, 1] and int64 [N]."""
    (images_path, *_), (labels_path, *_) = key
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise IdxFormatError(
            f"expected uint8 IDX files, got {images.dtype} ({images_path}) and "
            f"{labels.dtype} ({labels_path})"
        )
    if images.shape[0] != labels.shape[0]:
        raise IdxFormatError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise IdxFormatError(f"{labels_path}: label {int(labels.max())} >= {num_classes} classes")
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div_(255.0)
    y = torch.from_numpy(labels).to(torch.int64)
    logger.debug("decoded %s: %s", images_path, tuple(x.shape))
    return x, y

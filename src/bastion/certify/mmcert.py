"""MMCert: certified l0 robustness of multi-modal classifiers by independent sub-sampling.

Wang, Fu, Zou and Jia 2024, "MMCert: Provable Defense against Adversarial Attacks to
Multi-modal Models", CVPR 2024, arXiv 2403.19080; with one modality, randomized ablation
(Levine and Feizi 2020, arXiv 1911.09272). The smoothed classifier predicts the class the
base classifier votes for most often over random sub-samples of the input
(``bastion.models.ablation``: ``k_i`` of the ``n_i = H * W`` positions of modality ``i``);
``MMCertCertifier`` certifies, per input, the largest attack budget ``R = t * w`` along
chosen directions ``w`` for which no attack that touches at most ``r_i`` elements of
modality ``i`` can change that prediction (the condition and its derivation:
``bastion.certify.subsampling_bound``).

Per input (the seed's steps 1-4):

1. ``n0`` sub-samples select the top class ``A`` (as in Cohen et al.'s CERTIFY, so that ``A``
   is fixed before the estimate);
2. ``n`` fresh sub-samples count every class; ``B`` is the runner-up;
3. Clopper-Pearson bounds with a Bonferroni split of ``alpha``: ``p_A >= cp_lower(N_A, n,
   alpha / 2)`` and, for every other class at once, ``p_B <= min(1 - p_A_lower,
   cp_upper(N_B, n, alpha / (2 (K - 1))))`` (the runner-up is chosen from the same counts,
   so the ``alpha / 2`` of ``B`` is split over the ``K - 1`` classes it could be; the bound
   of the largest count bounds them all). ``bound="complement"`` uses ``p_B <= 1 - p_A``
   with all of ``alpha`` on ``p_A``: randomized ablation's bound. Both are discretised to
   multiples of ``1 / prod_i C(n_i, k_i)``;
4. the largest budget along each direction where the condition holds; the input abstains
   when not even ``R = 0`` is certified.

Guarantee: with probability at least ``1 - alpha`` over the sub-samples, if the input does
not abstain, the smoothed classifier predicts ``prediction`` for every input that differs
from it in at most ``modality_radius[i]`` elements of modality ``i`` (modified only, or
also added and deleted with ``operations="any"``). The record's ``radius`` is ``t`` along
``direction``; ``extra["radius_<name>"]`` holds ``t`` along every direction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion._validate import check_choice, check_images
from bastion.certify.forward import Precision, resolve_precision
from bastion.certify.smoothing import check_counts
from bastion.certify.stats import cp_lower, cp_upper
from bastion.certify.subsampling_bound import (
    OPERATIONS,
    Operations,
    Subsampling,
    discretise,
    largest_budget,
)
from bastion.certify.votes import VoteCounter
from bastion.errors import InputError
from bastion.models.ablation import ModalityLayout, layout_of, random_subsamples
from bastion.noise import Noise
from bastion.records import Certificate, CertificationRow

Bound = Literal["top2", "complement"]
BOUNDS: tuple[str, ...] = ("top2", "complement")


@dataclass(frozen=True)
class SubSample:
    """The randomisation of MMCert: ``k_i`` of the ``H * W`` positions of each modality.

    A ``votes.Randomization``: ``draw(x, m, generator)`` returns ``ablate(x, masks)``,
    ``[m, C + T, H, W]`` (kept values, then keep masks), for ``m`` independent sub-samples.
    """

    layout: ModalityLayout
    keep: tuple[int, ...]

    def draw(self, x: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
        return random_subsamples(x, m, self.layout, self.keep, generator)

    def params(self) -> dict[str, Any]:
        return {"randomization": "subsample", "keep": list(self.keep),
                "modalities": list(self.layout.names), "channels": list(self.layout.channels)}


def default_directions(layout: ModalityLayout) -> dict[str, tuple[int, ...]]:
    """``joint`` (the same budget in every modality), then each modality alone (T > 1)."""
    t = layout.num_modalities
    out = {"joint": (1,) * t}
    if t > 1:
        for i, name in enumerate(layout.names):
            out[name] = tuple(int(j == i) for j in range(t))
    return out


@dataclass(frozen=True, kw_only=True, eq=False)
class MMCertCertifier:
    """MMCert (arXiv 2403.19080) as a dataset certifier (``certify.pipeline.Certifier``).

    Args:
        model: the base classifier of sub-sampled inputs (e.g. ``mm-small-cnn``; its
            ``modality_layout`` says how the input's channels split into modalities).
        num_classes: K (>= 2).
        keep: ``k_i``, positions kept per modality (each in [1, H * W]).
        n0: selection sub-samples per input. Default 100.
        n: estimation sub-samples per input. Default 10,000.
        alpha: failure probability per input. Default 0.001.
        directions: name -> weights ``w`` (whole numbers >= 0): budgets ``R = t * w`` are
            certified along each; default ``default_directions`` (``joint``, then each
            modality alone).
        direction: the direction whose ``t`` is the certificate's ``radius``. Default
            ``"joint"``.
        operations: ``"modify"`` (images: the attacker changes pixels) or ``"any"`` (also
            adds and deletes elements).
        bound: ``"top2"`` (MMCert's Bonferroni bounds on ``p_A`` and ``p_B``) or
            ``"complement"`` (``p_B = 1 - p_A``, randomized ablation's).
        batch_size: sub-samples per forward pass. Default 1000.
        precision: ``"fp32"`` or ``"bf16"``.
    """

    norm: ClassVar[str] = "l0"
    SMALL: ClassVar[dict[str, Any]] = {"n0": 32, "n": 1000, "alpha": 0.01, "batch_size": 256}

    model: nn.Module
    num_classes: int
    keep: tuple[int, ...]
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    directions: Mapping[str, Sequence[int]] | None = None
    direction: str = "joint"
    operations: Operations = "modify"
    bound: Bound = "top2"
    batch_size: int = 1000
    precision: Precision = "fp32"
    layout: ModalityLayout = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        check_counts(n=self.n, alpha=self.alpha, n0=self.n0)
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or (
                self.num_classes < 2):
            raise InputError(f"num_classes must be an int >= 2, got {self.num_classes!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or (
                self.batch_size < 1):
            raise InputError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        check_choice(self.operations, OPERATIONS, "operations")
        check_choice(self.bound, BOUNDS, "bound")
        layout = layout_of(self.model)
        set_(self, "layout", layout)
        keep = tuple(self.keep) if isinstance(self.keep, Sequence) else (self.keep,)
        if len(keep) != layout.num_modalities:
            raise InputError(f"keep must give one count per modality ({', '.join(layout.names)})"
                             f", got {self.keep!r}")
        set_(self, "keep", keep)
        dirs = default_directions(layout) if self.directions is None else self.directions
        if not isinstance(dirs, Mapping) or not dirs:
            raise InputError("directions must map names to weights (one per modality)")
        resolved: dict[str, tuple[int, ...]] = {}
        for name, w in dirs.items():
            w = tuple(w)
            if len(w) != layout.num_modalities or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in w) or (
                    not any(w)):
                raise InputError(f"direction {name!r} must give {layout.num_modalities} whole "
                                 f"weights >= 0, not all 0, got {list(w)}")
            resolved[str(name)] = w
        set_(self, "directions", resolved)
        check_choice(self.direction, tuple(resolved), "direction")
        set_(self, "precision", resolve_precision(self.precision, self.device))

    @classmethod
    def small(cls, base_model: nn.Module, num_classes: int, *, noise: Noise | None = None,
              **overrides: Any) -> MMCertCertifier:
        """A cheap instance for tests: keep half the positions of each modality (read from
        the model's ``input_size``), few sub-samples; ``noise`` is ignored (none is drawn)."""
        layout = layout_of(base_model)
        size = next((m.input_size for m in base_model.modules()
                     if getattr(m, "modality_layout", None) is layout), None)
        if "keep" not in overrides:
            if size is None:
                raise InputError("pass keep: the model does not say its input_size")
            overrides["keep"] = (max(1, size[0] * size[1] // 2),) * layout.num_modalities
        return cls(model=base_model, num_classes=num_classes, **{**cls.SMALL, **overrides})

    @property
    def device(self) -> torch.device:
        p = next(unwrap(self.model).parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def inputs_per_call(self) -> int:
        return max(1, min(64, 4096 // (self.n0 + self.n)))

    def randomization(self) -> SubSample:
        return SubSample(self.layout, self.keep)

    def setup_for(self, x: torch.Tensor) -> Subsampling:
        """The sizes ``n_i = H * W`` and keep counts for inputs shaped like ``x``."""
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        self.layout.check_keep(self.keep, hw)
        return Subsampling((hw[0] * hw[1],) * self.layout.num_modalities, self.keep)

    def header(self, example: torch.Tensor, run: Mapping[str, Any]) -> dict[str, Any]:
        setup = self.setup_for(example)
        assert isinstance(self.directions, dict)
        return {**self.randomization().params(), "sizes": list(setup.sizes), "norm": "l0",
                "num_classes": self.num_classes, "n0": self.n0, "n": self.n,
                "alpha": self.alpha, **run, "precision": self.precision,
                "operations": self.operations, "bound": self.bound,
                "directions": {k: list(v) for k, v in self.directions.items()},
                "direction": self.direction}

    def _bounds(self, n_a: int, n_b: int) -> tuple[float, float]:
        if self.bound == "complement":
            lo = float(cp_lower(n_a, self.n, self.alpha))
            return lo, 1.0 - lo
        lo = float(cp_lower(n_a, self.n, self.alpha / 2))
        up = float(cp_upper(n_b, self.n, self.alpha / (2 * (self.num_classes - 1))))
        return lo, min(1.0 - lo, up)

    def certify(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> Certificate:
        check_images(x)
        if x.shape[1] != self.layout.in_channels:
            raise InputError(f"inputs have {x.shape[1]} channel(s); the model's modalities "
                             f"{list(self.layout.channels)} need {self.layout.in_channels}")
        if len(generators) != len(x):
            raise InputError(f"need one generator per input: {len(x)} inputs, "
                             f"{len(generators)} generators")
        setup = self.setup_for(x)
        net = unwrap(self.model)
        counter = VoteCounter(net, self.randomization(), self.num_classes,
                              memory_format="contiguous", batch_size=self.batch_size,
                              precision=self.precision)
        with model_mode(net, False), torch.inference_mode():
            select = counter.counts(x, generators, self.n0).cpu()
            counts = counter.counts(x, generators, self.n).cpu()
        assert isinstance(self.directions, dict)
        b = len(x)
        pred = select.argmax(dim=1)
        n_a = counts.gather(1, pred[:, None]).squeeze(1)
        others = counts.clone()
        others.scatter_(1, pred[:, None], -1)
        n_b = others.max(dim=1).values
        p_lo = torch.zeros(b, dtype=torch.float64)
        p_up = torch.zeros(b, dtype=torch.float64)
        radii = {name: torch.zeros(b, dtype=torch.float64) for name in self.directions}
        abstained = torch.zeros(b, dtype=torch.bool)
        for j in range(b):
            lo, up = discretise(*self._bounds(int(n_a[j]), int(n_b[j])), setup)
            p_lo[j], p_up[j] = lo, up
            for name, w in self.directions.items():
                t = largest_budget(lo, up, setup, w, self.operations)
                if t < 0:
                    abstained[j] = True
                    break
                radii[name][j] = float(t)
        for r in radii.values():
            r[abstained] = 0.0
        w = torch.tensor(self.directions[self.direction], dtype=torch.float64)
        radius = radii[self.direction]
        return Certificate(
            prediction=pred.to(torch.int64), radius=radius.clone(), abstained=abstained,
            norm="l0", method="mmcert" if self.bound == "top2" else "ablation",
            params={**self.randomization().params(), "sizes": list(setup.sizes),
                    "n0": self.n0, "n": self.n, "alpha": self.alpha,
                    "operations": self.operations, "bound": self.bound,
                    "direction": self.direction},
            extra={"nA": n_a, "nB": n_b, "n": torch.full((b,), self.n, dtype=torch.int64),
                   "p_lower": p_lo, "p_upper_b": p_up,
                   **{f"radius_{k}": v for k, v in radii.items()}},
            modality_radius=radius[:, None] * w[None, :],
            modalities=self.layout.names,
        )

    def details(self, cert: Certificate, j: int) -> dict[str, Any]:
        """``{"counts": {"nA", "nB", "n"}, "p_lower", "p_upper_b", "radii": {direction: t}}``."""
        assert isinstance(self.directions, dict)
        return {"counts": {"nA": int(cert.extra["nA"][j]), "nB": int(cert.extra["nB"][j]),
                           "n": int(cert.extra["n"][j])},
                "p_lower": float(cert.extra["p_lower"][j]),
                "p_upper_b": float(cert.extra["p_upper_b"][j]),
                "radii": {k: int(cert.extra[f"radius_{k}"][j]) for k in self.directions}}


def direction_certificates(rows: Sequence[CertificationRow],
                           params: Mapping[str, Any] | None = None) -> dict[str, Certificate]:
    """One l0 ``Certificate`` per direction of an MMCert rows file (``details["radii"]``),
    with labels and dataset index, so that ``metrics.certified_accuracy(cert, labels, t)``
    is the certified accuracy at budget ``t`` along that direction. ``params`` (e.g. the
    file's header, ``rowstore.read_header``) is recorded in each, with the direction."""
    if not rows:
        raise InputError("no rows to summarise")
    names = list(rows[0].details.get("radii", {}))
    if not names:
        raise InputError("these rows hold no per-direction radii (not an MMCert file)")
    common = dict(
        prediction=torch.tensor([r.prediction for r in rows], dtype=torch.int64),
        abstained=torch.tensor([r.abstained for r in rows], dtype=torch.bool),
        labels=torch.tensor([r.label for r in rows], dtype=torch.int64),
        index=torch.tensor([r.index for r in rows], dtype=torch.int64),
    )
    base = {k: v for k, v in (params or {}).items() if k not in ("direction", "directions")}
    return {name: Certificate(
        radius=torch.tensor([0.0 if r.abstained else float(r.details["radii"][name])
                             for r in rows], dtype=torch.float64),
        norm="l0", method="mmcert", params={**base, "direction": name},
        **common) for name in names}


__all__ = ["BOUNDS", "Bound", "MMCertCertifier", "SubSample", "default_directions",
           "direction_certificates"]

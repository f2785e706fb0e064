"""Deterministic L2 certificates from Lipschitz bounds: one forward pass per input.

For a chain network with pairwise constants ``K_yj >= Lip(f_y - f_j)``
(``bastion.models.lipschitz.bound``), the prediction ``y = argmax f(x)`` cannot change within

    r(x) = min_{j != y} (f_y(x) - f_j(x)) / K_yj

in L2 (pixel units): each difference ``f_y - f_j`` is positive at ``x`` and falls by at most
``K_yj ||delta||``. This is the Lipschitz-margin certificate of Tsuzuku, Sato and Sugiyama
2018 ("Lipschitz-Margin Training", arXiv 1802.04034) with the pairwise constants of GloRo
(Leino, Wang and Fredrikson 2021, arXiv 2102.08452); with ``per_logit=True`` it uses the
seed's looser ``K_y + K_j`` instead.

Soundness, in the order things can go wrong:

- the constants are Gram-iteration (or exact SVD) bounds of every layer of the model as it
  runs at prediction time (parametrizations are evaluated, in eval mode, and baked in), so
  they are upper bounds of the true constants, whatever the weights (no normalisation
  epsilon that hides tiny weights, gloro issue #8);
- logits, margins and radii are computed in float64 on a float64 copy of those weights, by
  replaying the chain layer by layer with a rigorous bound on the rounding error of the
  logits (``certify.forward_error``), which is subtracted from every margin; the radius is
  then shrunk by a relative ``1e-9`` for the rounding of the division; an input whose
  replay differs from the model's own forward (a data-dependent path) abstains;
- a tie for the top logit (margin <= 0) is never certified: the input abstains with radius 0
  (gloro issue #9);
- a pair whose constant is 0 (two identical rows of the last layer: ``f_y - f_j`` is constant)
  gets the diameter of the input cube, ``sqrt(d)``, the largest radius that means anything.

The certified object is the exact-arithmetic function of the weights the model uses at
prediction time, as stored (parametrizations evaluated in their own dtype, in eval mode,
then cast to float64; a ``LinearSpline`` recomputes its constrained values in float64).
Inference in float32 (or TF32 on GPUs) can differ from it by its own rounding, about 1e-6
(TF32: 1e-3) relative in the logits, which the certificate does not cover, as no
deterministic certifier in the literature does; hook-based reparametrizations
(``torch.nn.utils.spectral_norm``) are refused by the chain analysis.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion._validate import check_images
from bastion.certify.forward_error import replay_with_error
from bastion.errors import InputError
from bastion.models.lipschitz.bound import NetworkBound, network_bound
from bastion.models.lipschitz.chain import ChainLayer, layer_chain
from bastion.models.lipschitz.constraints import export_plain
from bastion.models.lipschitz.operator_norm import SOUND_METHODS
from bastion.records import Certificate

ROUNDING_MARGIN = 1e-9
"""Relative amount by which every radius is shrunk to absorb float64 rounding."""


def plain_float64(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` in eval mode with every parametrization baked in (the
    weights the model uses at prediction time, cast exactly to float64)."""
    net = copy.deepcopy(unwrap(model)).eval()
    export_plain(net)
    return net.double()


def margin_radius(logits: torch.Tensor, pairwise: torch.Tensor, *, dim: int,
                  slack: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(prediction, radius, abstained, runner_up)`` of the margin certificate.

    Args:
        logits: float64 ``[N, K]``.
        pairwise: float64 ``[K, K]``, ``K_ij >= Lip(f_i - f_j)``.
        dim: the input dimension ``d`` (for the cap ``sqrt(d)``).
        slack: float64 ``[N]``, a bound on the rounding error of every logit difference
            (``forward_error.replay_with_error``), subtracted from every margin; a point
            whose margin does not exceed it abstains.

    Returns:
        prediction int64 [N]; radius float64 [N] (0 where abstained); abstained bool [N]
        (a tie for the top logit); runner_up int64 [N], the class ``j`` attaining the
        minimum (the certificate's weakest pair).
    """
    if logits.dtype != torch.float64 or pairwise.dtype != torch.float64:
        raise InputError("margin_radius computes in float64: pass float64 logits and constants")
    n, k = logits.shape
    pred = logits.argmax(dim=1)
    top = logits.gather(1, pred[:, None])
    if not bool(torch.isfinite(pairwise).all()):
        raise InputError("the pairwise constants are not all finite")
    margins = top - logits                                   # [N, K], >= 0
    if slack is not None:
        margins = margins - slack.to(margins)[:, None]
    consts = pairwise[pred]                                  # [N, K]
    cap = math.sqrt(dim)
    ratio = torch.where(consts > 0, margins / consts.clamp_min(1e-300),
                        torch.where(margins > 0, torch.full_like(margins, cap),
                                    torch.zeros_like(margins)))
    ratio = ratio.clamp(0.0, cap)
    own = torch.nn.functional.one_hot(pred, k).bool()
    ratio = ratio.masked_fill(own, float("inf"))
    radius, runner = ratio.min(dim=1)
    others = margins.masked_fill(own, float("inf"))
    tie = others.amin(dim=1) <= 0
    radius = torch.where(tie, torch.zeros_like(radius), radius * (1 - ROUNDING_MARGIN))
    return pred, radius, tie, runner


def topk_radii(logits: torch.Tensor, pairwise: torch.Tensor, k: int, *,
               dim: int | None = None, slack: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(radius, order)``: the L2 radius up to which each top-``k'`` set is certified.

    For the top-``k'`` classes ``J`` (``order[:, :k']``), the relaxed top-k margin of
    ``losses.gloro.topk_margins`` is ``min_{l in J, i not in J} f_l - f_i - eps K_li``, positive
    exactly for ``eps < min_{l in J, i not in J} (f_l - f_i) / K_li``: that minimum is
    ``radius[:, k'-1]`` (0 for a tie across the set's boundary). A labelled point is
    top-k certified at ``r`` when some ``k' <= k`` has ``radius > r`` and ``label`` in
    ``order[:, :k']`` (Leino and Fredrikson 2021, arXiv 2106.06624).

    Args:
        logits: float64 ``[N, K]``; pairwise: float64 ``[K, K]``; k: in [1, K-1].
        dim: the input dimension: radii are capped at ``sqrt(dim)`` (a zero constant);
            None leaves them unbounded (``inf``).
        slack: float64 ``[N]`` subtracted from every logit gap, as in :func:`margin_radius`.
    """
    n, n_cls = logits.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n_cls:
        raise InputError(f"k must be an int in [1, {n_cls - 1}], got {k!r}")
    vals, order = logits.topk(n_cls, dim=1)
    out = torch.empty(n, k, dtype=torch.float64)
    for kp in range(1, k + 1):
        inside, outside = order[:, :kp], order[:, kp:]
        gap = vals[:, :kp, None] - vals[:, None, kp:]              # [N, k', K-k']
        if slack is not None:
            gap = gap - slack.to(gap)[:, None, None]
        const = pairwise[inside[:, :, None], outside[:, None, :]]  # [N, k', K-k']
        ratio = torch.where(const > 0, gap / const.clamp_min(1e-300),
                            torch.where(gap > 0, torch.full_like(gap, float("inf")),
                                        torch.zeros_like(gap)))
        r = ratio.flatten(1).amin(dim=1)
        if dim is not None:
            r = r.clamp_max(math.sqrt(dim))
        out[:, kp - 1] = torch.where(gap.flatten(1).amin(dim=1) <= 0, torch.zeros_like(r), r)
    return out * (1 - ROUNDING_MARGIN), order[:, :k]


def topk_certified_accuracy(cert: Certificate, labels: torch.Tensor, radii: Sequence[float]
                            ) -> list[float]:
    """Top-k certified accuracy at each radius from a certificate made with ``top_k > 1``
    (its ``extra["topk_radius"]`` and ``extra["topk_order"]``; see :func:`topk_radii`)."""
    if "topk_radius" not in cert.extra:
        raise InputError("the certificate has no top-k radii (certify with top_k > 1)")
    rad, order = cert.extra["topk_radius"], cert.extra["topk_order"]
    member = (order == labels.view(-1, 1)).cumsum(dim=1) > 0        # label in top-k'
    out = []
    for r in radii:
        ok = member & (rad > float(r))
        out.append(float(ok.any(dim=1).double().mean()))
    return out


@dataclass(frozen=True, kw_only=True, eq=False)
class LipschitzCertifier:
    """The Lipschitz-margin certificate as a ``certify.pipeline.Certifier`` (L2).

    Args:
        model: a chain classifier (``models.lipschitz.chain``) on [0, 1] images, last layer
            ``nn.Linear``.
        num_classes: K.
        method: the operator-norm method of its linear and conv layers: ``"gram"``
            (Gram iteration, sound, default) or ``"svd"`` (exact, small layers only); an
            unsound method (``"power"``) warns and is marked in the params.
        per_logit: use the seed's ``K_y + K_j`` instead of the pairwise ``K_yj``.
        top_k: with ``k > 1`` the certificate also carries the relaxed top-k radii of every
            input (``extra["topk_radius"]`` [N, k], ``extra["topk_order"]`` [N, k]; see
            :func:`topk_radii` and :func:`topk_certified_accuracy`).
        batch_size: inputs per float64 forward pass.
        bound: a precomputed ``NetworkBound`` of ``model`` (checked against the model: the
            same layers and last weight), else computed from the model's weights. Either is
            cached and recomputed when any parameter or buffer of the model changes.

    Each call replays the model's chain layer by layer in float64 with a bound on its
    rounding error (``certify.forward_error``), subtracts that bound from every margin,
    and abstains on any input whose replayed logits differ from the model's own forward
    (a data-dependent path the chain does not describe). Inputs draw no randomness:
    ``generators`` are accepted and ignored.
    """

    model: nn.Module
    num_classes: int
    method: str = "gram"
    per_logit: bool = False
    top_k: int = 1
    batch_size: int = 1000
    bound: NetworkBound | None = None
    _cache: dict[str, Any] = field(init=False, repr=False, default_factory=dict)

    NOISE_FREE: ClassVar[bool] = True
    norm: ClassVar[str] = "l2"

    def __post_init__(self) -> None:
        if self.method not in SOUND_METHODS:
            raise InputError(f"unknown bound method {self.method!r}; valid: "
                             f"{', '.join(SOUND_METHODS)}")
        if not SOUND_METHODS[self.method]:
            warnings.warn(f"bound method {self.method!r} is not a guaranteed upper bound: the "
                          "radii are estimates, not certificates", stacklevel=2)
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not (
                1 <= self.top_k < self.num_classes):
            raise InputError(f"top_k must be an int in [1, {self.num_classes - 1}], got "
                             f"{self.top_k!r}")

    @classmethod
    def small(cls, base_model: nn.Module, num_classes: int, *, noise: Any = None,
              **overrides: Any) -> LipschitzCertifier:
        """A certifier for tests (``noise`` is ignored: nothing is random here)."""
        return cls(model=base_model, num_classes=num_classes, **overrides)

    @property
    def device(self) -> torch.device:
        p = next(unwrap(self.model).parameters(), None)
        return torch.device("cpu") if p is None else p.device

    @property
    def inputs_per_call(self) -> int:
        return self.batch_size

    def _weights_key(self) -> tuple:
        """Identifies the model's current weights (in-place updates bump ``_version``)."""
        net = unwrap(self.model)
        return tuple((n, t.data_ptr(), t._version, t.dtype) for n, t in
                     [*net.named_parameters(), *net.named_buffers()])

    def _prepared(self, example: torch.Tensor
                  ) -> tuple[nn.Module, NetworkBound, torch.Tensor, list[ChainLayer]]:
        key = self._weights_key()
        if self._cache.get("key") != key:
            net = plain_float64(self.model)
            ex = example[:1].to(self.device, torch.float64)
            chain = layer_chain(net, ex)
            bound = network_bound(net, ex, method=self.method) if self.bound is None else (
                self._checked(self.bound, chain))
            if bound.last_weight.shape[0] != self.num_classes:
                raise InputError(f"the model has {bound.last_weight.shape[0]} logits, not "
                                 f"num_classes={self.num_classes}")
            if self.per_logit:
                kj = bound.per_logit()
                pair = kj[:, None] + kj[None, :]
                pair.fill_diagonal_(0.0)
            else:
                pair = bound.pairwise()
            last_norm = float(torch.linalg.matrix_norm(bound.last_weight, ord=2))
            self._cache.clear()
            self._cache.update(key=key, net=net, bound=bound, pairwise=pair, chain=chain,
                               last_norm=last_norm)
        c = self._cache
        return c["net"], c["bound"], c["pairwise"], c["chain"]

    @staticmethod
    def _checked(bound: NetworkBound, chain: list[ChainLayer]) -> NetworkBound:
        names = [c.name for c in bound.layers] + [bound.last_name]
        last = chain[-1].module.weight.detach().double().cpu()
        if names != [c.name for c in chain] or not torch.equal(bound.last_weight, last):
            raise InputError("the given bound is not this model's (other layers or another "
                             "last weight); drop bound= to compute it")
        if not bound.sound:
            warnings.warn("the given bound is not sound: the radii are estimates",
                          stacklevel=3)
        return bound

    def header(self, example: torch.Tensor, run: Mapping[str, Any]) -> dict[str, Any]:
        _, bound, pair, _ = self._prepared(example)
        return {
            "certifier": "lipschitz", "method": self.method, "per_logit": self.per_logit,
            "top_k": self.top_k,
            "sound": bound.sound, "prefix": bound.prefix,
            "layers": [{"name": c.name, "kind": c.kind, "constant": c.constant,
                        "method": c.method} for c in bound.layers],
            "max_pairwise": float(pair.max()), **run,
        }

    def certify(self, x: torch.Tensor, generators: Sequence[torch.Generator] | None = None
                ) -> Certificate:
        """The certificate of ``x`` ``[B, C, H, W]`` in [0, 1] (``generators`` unused)."""
        check_images(x, "x")
        net, bound, pair, chain = self._prepared(x)
        consts = [c.constant for c in bound.layers]
        logits, errors, same = [], [], []
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                xb = x[i:i + self.batch_size].to(self.device, torch.float64)
                z_b, e_b = replay_with_error(chain, consts, self._cache["last_norm"], xb)
                own = net(xb)
                logits.append(z_b.cpu())
                errors.append(e_b.cpu())
                same.append((own.reshape(z_b.shape) == z_b).all(dim=1).cpu())
        z, err, agree = torch.cat(logits), torch.cat(errors), torch.cat(same)
        if not bool(agree.all()):
            warnings.warn(f"{int((~agree).sum())} input(s) take another path through the model "
                          "than its chain of layers (the replay differs from the forward): "
                          "they abstain", stacklevel=2)
        slack = math.sqrt(2.0) * err
        pred, radius, tie, runner = margin_radius(z, pair.cpu(), dim=int(x[0].numel()),
                                                  slack=slack)
        tie = tie | ~agree
        radius = torch.where(agree, radius, torch.zeros_like(radius))
        top2 = z.topk(2, dim=1).values
        extra = {"margin": (top2[:, 0] - top2[:, 1]), "runner_up": runner,
                 "rounding_error": slack}
        if self.top_k > 1:
            rad, order = topk_radii(z, pair.cpu(), self.top_k, dim=int(x[0].numel()),
                                    slack=slack)
            extra["topk_radius"] = torch.where(agree[:, None], rad, torch.zeros_like(rad))
            extra["topk_order"] = order
        return Certificate(
            prediction=pred, radius=radius, abstained=tie, norm="l2",
            method="lipschitz-margin",
            params={"bound": self.method, "per_logit": self.per_logit, "sound": bound.sound,
                    "prefix": bound.prefix, "top_k": self.top_k},
            extra=extra,
        )

    def details(self, cert: Certificate, j: int) -> dict[str, Any]:
        out: dict[str, Any] = {"margin": float(cert.extra["margin"][j]),
                               "runner_up": int(cert.extra["runner_up"][j])}
        if "topk_radius" in cert.extra:
            out["topk_radius"] = [float(r) for r in cert.extra["topk_radius"][j]]
            out["topk_order"] = [int(c) for c in cert.extra["topk_order"][j]]
        return out


def certificate_from_rows(rows: Sequence[Any]) -> Certificate:
    """The ``Certificate`` of a Lipschitz certification's rows (``certify_dataset`` over a
    :class:`LipschitzCertifier`), with the top-k radii back in ``extra`` when the rows have
    them."""
    from bastion.certify.summary import rows_to_certificate

    cert = rows_to_certificate(rows, "l2", "lipschitz-margin")
    if not rows or "topk_radius" not in rows[0].details:
        return cert
    extra = {"topk_radius": torch.tensor([r.details["topk_radius"] for r in rows],
                                         dtype=torch.float64),
             "topk_order": torch.tensor([r.details["topk_order"] for r in rows],
                                        dtype=torch.int64)}
    return Certificate(prediction=cert.prediction, radius=cert.radius,
                       abstained=cert.abstained, norm="l2", method=cert.method,
                       extra=extra, labels=cert.labels, index=cert.index)


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """K, from the chain's last layer (the analysis refuses what it cannot bound first)."""
    check_images(x, "x")
    last = layer_chain(model, x[:1])[-1].module
    if not isinstance(last, nn.Linear):
        raise InputError(f"the model's last layer is a {type(last).__name__}; a margin "
                         "certificate needs a Linear layer producing the logits")
    return int(last.out_features)


def certify_lipschitz(model: nn.Module, x: torch.Tensor, *, num_classes: int | None = None,
                      method: str = "gram", per_logit: bool = False,
                      labels: torch.Tensor | None = None) -> Certificate:
    """One-call Lipschitz-margin certificate of a batch (see :class:`LipschitzCertifier`)."""
    if num_classes is None:
        num_classes = _num_classes(model, x)
    cert = LipschitzCertifier(model=model, num_classes=num_classes, method=method,
                              per_logit=per_logit).certify(x)
    if labels is None:
        return cert
    return Certificate(prediction=cert.prediction, radius=cert.radius,
                       abstained=cert.abstained, norm=cert.norm, method=cert.method,
                       params=cert.params, extra=cert.extra, labels=labels.long().cpu())


def predict_or_bottom(model: nn.Module, x: torch.Tensor, eps: float, *,
                      num_classes: int | None = None, method: str = "gram") -> torch.Tensor:
    """GloRo's prediction (Leino, Wang and Fredrikson 2021): the class where it is certified
    on the whole L2 eps-ball, else the bottom class ``K`` (int64 ``[N]``).

    Uses the sound constants and float64 margins of :class:`LipschitzCertifier`: a point is
    certified at eps when its radius exceeds eps (a radius equal to eps leaves a tie
    possible at the boundary).
    """
    k = num_classes if num_classes is not None else _num_classes(model, x)
    cert = certify_lipschitz(model, x, num_classes=k, method=method)
    ok = (~cert.abstained) & (cert.radius > float(eps))
    return torch.where(ok, cert.prediction, torch.full_like(cert.prediction, k))


def verified_robust_accuracy(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                             eps: float, *, method: str = "gram") -> float:
    """GloRo's VRA at ``eps``: the fraction of points predicted correctly and certified on the
    L2 eps-ball (the certified accuracy of the seed's eq. (4) at ``eps``)."""
    pred = predict_or_bottom(model, x, eps, method=method)
    return float((pred == labels.to(pred.device).long()).double().mean())


def empirical_lipschitz(model: nn.Module, x: torch.Tensor, i: int, j: int, *,
                        steps: int = 100, lr: float = 0.01, delta: float = 0.05,
                        generator: torch.Generator | None = None) -> float:
    """A lower bound on ``Lip(f_i - f_j)`` in L2, found by ascent (a sanity check that each
    certified constant lies above it).

    Maximises ``|g(a) - g(b)| / ||a - b||_2`` for ``g = f_i - f_j`` over pairs starting at
    ``a = x`` and ``b = x + delta u`` (u random unit directions), with Adam on both points,
    and returns the largest ratio seen, together with the largest input-gradient norm
    ``||grad g||`` met on the way (each is a valid lower bound of the constant: a
    difference quotient, or the norm of a gradient where ``g`` is differentiable).

    Args:
        model: the classifier (run in eval mode; its flags are restored).
        x: ``[N, C, H, W]`` starting points.
        i, j: the two classes.
        steps, lr: the ascent's length and Adam step (pixel units).
        delta: the initial distance between the two points of a pair.
        generator: for the random directions.
    """
    check_images(x, "x")
    g = generator or torch.Generator(device=x.device).manual_seed(0)
    u = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    u = u / u.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    a = x.detach().clone().requires_grad_(True)
    b = (x + delta * u).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=lr)
    best = 0.0
    with model_mode(model, False):
        for _ in range(steps):
            ga = model(a)
            gb = model(b)
            da, db = ga[:, i] - ga[:, j], gb[:, i] - gb[:, j]
            dist = (a - b).flatten(1).norm(dim=1).clamp_min(1e-12)
            ratio = (da - db).abs() / dist
            grad = torch.autograd.grad(da.sum(), a, retain_graph=True)[0]
            best = max(best, float(ratio.detach().max()), float(grad.flatten(1).norm(dim=1).max()))
            opt.zero_grad()
            (-ratio.sum()).backward()
            opt.step()
    return best

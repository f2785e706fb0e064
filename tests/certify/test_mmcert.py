"""MMCert's certifier (``certify.mmcert``): its radii are the condition's, its bounds hold."""

from __future__ import annotations

import pytest
import torch

from bastion.certify.mmcert import MMCertCertifier, SubSample, default_directions
from bastion.certify.stats import cp_lower
from bastion.certify.subsampling_bound import Subsampling, ablation_radius, largest_budget
from bastion.errors import InputError
from bastion.models.ablation import ModalityLayout
from tests.contracts._tiny import PixelVotes, pixel_vote_fraction


class TwoViewVotes(torch.nn.Module):
    """Two modalities of one channel each; votes class 1 iff the kept pixels of both views
    average above 1/2 (absent pixels count 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.modality_layout = ModalityLayout((1, 1), ("a", "b"))
        self.input_size = (4, 4)
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        kept = x[:, :2].sum(dim=(1, 2, 3)) / x[:, 2:].sum(dim=(1, 2, 3)).clamp_min(1)
        z = self.w * (kept - 0.5)
        return torch.stack([-z, z], dim=1)


def _inputs(n=12, seed=0, channels=1):
    g = torch.Generator().manual_seed(seed)
    frac = torch.linspace(0, 1, n)
    x = (torch.rand(n, channels, 4, 4, generator=g) < frac[:, None, None, None]).float()
    return 0.25 + 0.5 * x  # pixels 0.25 or 0.75


def _gens(n, offset=0):
    return [torch.Generator().manual_seed(7 + offset + i) for i in range(n)]


def test_radii_are_the_conditions_largest_budgets_along_every_direction():
    model = TwoViewVotes()
    c = MMCertCertifier(model=model, num_classes=2, keep=(2, 3), n0=50, n=2000, alpha=0.01,
                        batch_size=512)
    assert set(c.directions) == {"joint", "a", "b"}
    x = _inputs(channels=2)
    cert = c.certify(x, _gens(len(x)))
    assert cert.norm == "l0" and cert.modalities == ("a", "b")
    setup = Subsampling((16, 16), (2, 3))
    for j in range(len(x)):
        lo, up = float(cert.extra["p_lower"][j]), float(cert.extra["p_upper_b"][j])
        for name, w in c.directions.items():
            want = largest_budget(lo, up, setup, w)
            got = float(cert.extra[f"radius_{name}"][j])
            assert got == (0.0 if cert.abstained[j] else want)
        assert cert.radius[j] == cert.extra["radius_joint"][j]
        assert torch.equal(cert.modality_radius[j], cert.radius[j] * torch.ones(2,
                                                                               dtype=torch.float64))
        # one modality alone can absorb at least the joint budget
        assert cert.extra["radius_a"][j] >= cert.radius[j]
    assert (cert.radius > 0).any() and cert.abstained.any()


def test_complement_bound_with_one_modality_is_randomized_ablation():
    model = PixelVotes((4, 4))
    c = MMCertCertifier(model=model, num_classes=2, keep=(1,), n0=50, n=1000, alpha=0.01,
                        bound="complement", batch_size=512)
    x = _inputs()
    cert = c.certify(x, _gens(len(x)))
    assert cert.method == "ablation"
    for j in range(len(x)):
        n_a = int(cert.extra["nA"][j])
        p_lo = float(cp_lower(n_a, 1000, 0.01))
        want = ablation_radius(p_lo, 16, 1)
        got = -1 if cert.abstained[j] else int(cert.radius[j])
        assert got == want, (j, n_a)


def test_lower_bounds_hold_and_predictions_are_the_smoothed_classifiers():
    model = PixelVotes((4, 4))
    c = MMCertCertifier(model=model, num_classes=2, keep=(1,), n0=50, n=500, alpha=0.05,
                        batch_size=512)
    x = _inputs(n=40, seed=3)
    cert = c.certify(x, _gens(len(x)))
    p1 = pixel_vote_fraction(model, x)
    p_top = torch.where(cert.prediction == 1, p1, 1 - p1)
    ok = ~cert.abstained
    assert (cert.extra["p_lower"][ok] <= p_top[ok] + 1e-12).all()
    assert (cert.prediction[ok] == (p1[ok] > 0.5).long()).all()
    # the top-2 bound is never looser than the complement: p_upper_b <= 1 - p_lower
    assert (cert.extra["p_upper_b"] <= 1 - cert.extra["p_lower"] + 1e-12).all()


def test_additions_and_deletions_never_certify_more_than_modifications():
    model = TwoViewVotes()
    x = _inputs(channels=2)
    mod = MMCertCertifier(model=model, num_classes=2, keep=(1, 1), n0=50, n=2000,
                          batch_size=512).certify(x, _gens(len(x)))
    anyop = MMCertCertifier(model=model, num_classes=2, keep=(1, 1), n0=50, n=2000,
                            operations="any", batch_size=512).certify(x, _gens(len(x)))
    assert torch.equal(mod.extra["nA"], anyop.extra["nA"])  # same draws
    assert (anyop.radius <= mod.radius).all()
    # with one kept element an addition costs the defense less than a modification
    # ((2r - a) / n against 2r / n), so here the radii agree; test_subsampling_bound has
    # the cases where additions are the worst attack
    assert torch.equal(anyop.radius, mod.radius)


def test_subsample_randomization_and_header():
    layout = ModalityLayout((1, 1))
    r = SubSample(layout, (3, 5))
    copies = r.draw(torch.rand(2, 4, 4) + 0.1, 7, torch.Generator().manual_seed(0))
    assert copies.shape == (7, 4, 4, 4)
    kept = copies[:, 2:].flatten(2).sum(2)
    assert (kept[:, 0] == 3).all() and (kept[:, 1] == 5).all()
    assert r.params()["keep"] == [3, 5]
    assert default_directions(ModalityLayout((3,))) == {"joint": (1,)}
    c = MMCertCertifier(model=TwoViewVotes(), num_classes=2, keep=(2, 2), n=100, n0=10,
                        directions={"ratio": (1, 2)}, direction="ratio")
    h = c.header(torch.rand(1, 2, 4, 4), {"seed": 0, "skip": 1, "num_images": 1})
    assert h["directions"] == {"ratio": [1, 2]} and h["sizes"] == [16, 16]
    cert = c.certify(_inputs(4, channels=2), _gens(4))
    assert torch.equal(cert.modality_radius[:, 1], 2 * cert.radius)


def test_bad_input():
    model = TwoViewVotes()
    with pytest.raises(InputError, match="one count per modality"):
        MMCertCertifier(model=model, num_classes=2, keep=(2,))
    with pytest.raises(InputError, match="direction"):
        MMCertCertifier(model=model, num_classes=2, keep=(2, 2), direction="left")
    with pytest.raises(InputError, match="weights"):
        MMCertCertifier(model=model, num_classes=2, keep=(2, 2), directions={"z": (0, 0)})
    with pytest.raises(InputError, match="bound"):
        MMCertCertifier(model=model, num_classes=2, keep=(2, 2), bound="exact")
    c = MMCertCertifier(model=model, num_classes=2, keep=(2, 2), n=100, n0=10)
    with pytest.raises(InputError, match="channel"):
        c.certify(torch.rand(2, 1, 4, 4), _gens(2))
    with pytest.raises(InputError, match="keep"):
        MMCertCertifier(model=model, num_classes=2, keep=(20, 2), n=100, n0=10).certify(
            torch.rand(1, 2, 4, 4), _gens(1))
    with pytest.raises(InputError, match="mm-small-cnn"):
        MMCertCertifier(model=torch.nn.Linear(2, 2), num_classes=2, keep=(2,))

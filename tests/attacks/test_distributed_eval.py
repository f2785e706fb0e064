"""Per-batch seeding of ``evaluate_attacks`` / ``evaluate_minimal`` and their split across
``torchrun`` ranks: two gloo processes produce exactly the record of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bastion.attacks.evaluate import evaluate_attack, evaluate_attacks, evaluate_minimal
from bastion.attacks.sharding import batch_seed, map_batches, owned_batches, process_share
from bastion.attacks.spec import AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.data import load_dataset
from bastion.records import EvalResult, load_record
from tests.attacks.eval_worker import BATCH_SIZE, N_POINTS, tiny_model

PGD_RS = AttackSpec(threat=ThreatModel(eps=0.1, steps=5, random_init=True), restarts=2)


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """``tiny_model`` fitted on digits for a moment (full-batch Adam): most test points
    are classified correctly, so the attacks have work to do."""
    torch.manual_seed(0)
    model = tiny_model()
    data = load_dataset("digits", "train")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.images), data.labels).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def points() -> tuple[torch.Tensor, torch.Tensor]:
    test = load_dataset("digits", "test")
    return test.images[:50], test.labels[:50]


def _same_points(a: EvalResult, b: EvalResult) -> None:
    """Exact equality of everything but the timings."""
    assert torch.equal(a.index, b.index) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.clean_pred, b.clean_pred)
    assert a.params == b.params and len(a.outcomes) == len(b.outcomes)
    for oa, ob in zip(a.outcomes, b.outcomes, strict=True):
        assert (oa.attack, oa.norm, oa.eps, oa.params) == (ob.attack, ob.norm, ob.eps, ob.params)
        assert torch.equal(oa.adv_pred, ob.adv_pred)
        assert torch.equal(oa.perturbation, ob.perturbation)


# ------------------------------------------------------------------ per-batch seeds

def test_batch_seed_is_seed_for_batch_zero_and_distinct_otherwise():
    assert batch_seed(7, 0) == 7
    seeds = {batch_seed(s, b) for s in range(4) for b in range(1, 50)}
    assert len(seeds) == 4 * 49 and all(0 <= s < 2**63 for s in seeds)
    assert batch_seed(3, 5) == batch_seed(3, 5)


def test_owned_batches_cover_every_batch_once():
    for world in (1, 2, 3):
        owned = [b for r in range(world) for b in owned_batches(5, r, world)]
        assert sorted(owned) == list(range(5))
    assert list(owned_batches(5, 0, 2)) == [0, 2, 4]
    assert list(owned_batches(5, 1, 2)) == [1, 3]


def test_outcome_is_the_same_alone_or_beside_other_attacks(trained, points):
    x, y = points
    other = AttackSpec(threat=ThreatModel(eps=0.5, norm="l2", steps=3, random_init=True))
    alone = evaluate_attack(trained, x, y, PGD_RS, batch_size=16, seed=3)
    beside = evaluate_attacks(trained, x, y, [other, PGD_RS, other], batch_size=16, seed=3)
    a, b = alone.only(), beside.outcomes[1]
    assert torch.equal(a.adv_pred, b.adv_pred) and torch.equal(a.perturbation, b.perturbation)
    l2 = evaluate_attack(trained, x, y, other, batch_size=16, seed=3).only()
    for o in (beside.outcomes[0], beside.outcomes[2]):
        assert torch.equal(l2.adv_pred, o.adv_pred) and torch.equal(l2.perturbation, o.perturbation)
    # the random start matters: another seed ends elsewhere
    elsewhere = evaluate_attack(trained, x, y, PGD_RS, batch_size=16, seed=4).only()
    assert not torch.equal(a.adv_pred, elsewhere.adv_pred)
    l2_elsewhere = evaluate_attack(trained, x, y, other, batch_size=16, seed=4).only()
    assert not torch.equal(l2.perturbation, l2_elsewhere.perturbation)


def test_results_are_reproducible_and_leave_the_global_rng_alone(trained, points):
    x, y = points
    state = torch.get_rng_state()
    one = evaluate_attacks(trained, x, y, [PGD_RS], batch_size=16, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    _same_points(one, evaluate_attacks(trained, x, y, [PGD_RS], batch_size=16, seed=1))
    fmn = evaluate_minimal(trained, x, y, steps=10, batch_size=16)
    bis = evaluate_minimal(trained, x, y, attack="bisection", eps_max=0.4, steps=3,
                           search_steps=3, batch_size=16, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    _same_points(fmn, evaluate_minimal(trained, x, y, steps=10, batch_size=16))
    _same_points(bis, evaluate_minimal(trained, x, y, attack="bisection", eps_max=0.4,
                                       steps=3, search_steps=3, batch_size=16, seed=1))


def test_each_batch_draws_from_its_own_seed(trained, points):
    """Batch b's outcome is the attack run on those points alone with a generator seeded
    ``batch_seed(seed, b)``: it does not depend on the batches before it."""
    x, y = points
    full = evaluate_attack(trained, x, y, PGD_RS, batch_size=16, seed=9).only()
    for b in range(4):
        sl = slice(16 * b, 16 * (b + 1))
        xb, yb = x[sl], y[sl]
        ok = trained(xb).argmax(1) == yb
        gen = torch.Generator().manual_seed(batch_seed(9, b))
        r = PGD_RS.run(trained, xb[ok], yb[ok], generator=gen)
        assert torch.equal(trained(r.x_adv).argmax(1), full.adv_pred[sl][ok])


def test_torchattacks_attacks_are_seeded_per_batch_and_restore_the_global_rng(trained):
    pytest.importorskip("torchattacks")
    test = load_dataset("digits", "test")
    x, y = test.images[:24], test.labels[:24]
    spec = AttackSpec(name="apgd-ce", threat=ThreatModel(eps=0.1, steps=3))
    state = torch.get_rng_state()
    alone = evaluate_attack(trained, x, y, spec, batch_size=8)
    assert torch.equal(torch.get_rng_state(), state)
    beside = evaluate_attacks(trained, x, y, [PGD_RS, spec], batch_size=8)
    _same_points(alone, EvalResult(index=beside.index, labels=beside.labels,
                                   clean_pred=beside.clean_pred,
                                   outcomes=beside.outcomes[1:]))


def test_distributed_argument(trained, points):
    x, y = points
    assert process_share(None) == (0, 1) and process_share(False) == (0, 1)
    with pytest.raises(ValueError, match="initialised torch.distributed process group"):
        evaluate_attack(trained, x, y, PGD_RS, distributed=True)
    with pytest.raises(TypeError, match="distributed must be True, False or None"):
        evaluate_minimal(trained, x, y, distributed="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="images is empty"):
        evaluate_attack(trained, x[:0], y[:0], PGD_RS)
    seen: list[int] = []
    r = evaluate_attack(trained, x, y, PGD_RS, batch_size=16, progress=seen.append,
                        distributed=False)
    assert seen == [16, 16, 16, 2] and r.index.tolist() == list(range(50))


def _fake_rank_one(monkeypatch, payload) -> list[object]:
    """Make this process rank 0 of 2 whose peer sends ``payload``; returns what was sent."""
    sent: list[object] = []

    def all_gather_object(out: list, obj: object) -> None:
        sent.append(obj)
        out[0], out[1] = obj, payload

    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    return sent


def test_map_batches_merges_the_pieces_of_both_ranks_in_batch_order(monkeypatch):
    sent = _fake_rank_one(monkeypatch, ((5, "sig"), ("ok", [(1, "b1"), (3, "b3")])))
    got = map_batches(lambda b: f"b{b}", 5, rank=0, world=2, signature="sig")
    assert got == ["b0", "b1", "b2", "b3", "b4"]
    assert sent == [((5, "sig"), ("ok", [(0, "b0"), (2, "b2"), (4, "b4")]))]
    assert map_batches(lambda b: b, 3, rank=0, world=1) == [0, 1, 2]  # no exchange


def test_map_batches_raises_on_every_rank_when_one_fails_or_disagrees(monkeypatch):
    _fake_rank_one(monkeypatch, ((5, "sig"), ("error", KeyError("on rank 1"))))
    with pytest.raises(KeyError, match="on rank 1") as info:
        map_batches(lambda b: b, 5, rank=0, world=2, signature="sig")
    assert "raised on rank 1 of 2" in " ".join(info.value.__notes__)
    sent = _fake_rank_one(monkeypatch, ((5, "sig"), ("ok", [(1, 1), (3, 3)])))

    def fail(b: int) -> int:
        raise ZeroDivisionError(f"batch {b}")

    with pytest.raises(ZeroDivisionError, match="batch 0"):
        map_batches(fail, 5, rank=0, world=2, signature="sig")
    assert sent[0][1][0] == "error"  # the failure was still sent: the peer does not hang
    _fake_rank_one(monkeypatch, ((5, "other"), ("ok", [(1, 1), (3, 3)])))
    with pytest.raises(ValueError, match="every rank must pass the same points"):
        map_batches(lambda b: b, 5, rank=0, world=2, signature="sig")


# ------------------------------------------------------------------ torchrun, 2 ranks

def _run_worker(out: Path, *launcher: str) -> None:
    worker = Path(__file__).with_name("eval_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, *launcher, str(worker), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_ranks_produce_the_single_process_record(tmp_path, trained):
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    _run_worker(tmp_path)  # one plain process: the reference
    # --standalone: torchrun's c10d rendezvous on localhost picks a free port itself
    _run_worker(tmp_path, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2")
    for name in ("pgd", "fmn", "bisection"):
        single = load_record(EvalResult, tmp_path / f"single-{name}.json")
        assert len(single) == N_POINTS
        for rank in (0, 1):
            merged = load_record(EvalResult, tmp_path / f"rank{rank}-{name}.json")
            _same_points(merged, single)
            assert all(o.seconds > 0 for o in merged.outcomes)
    pgd = load_record(EvalResult, tmp_path / "single-pgd.json")
    assert float(pgd.clean_correct.double().mean()) > 0.5  # the attacks had work to do
    assert int((pgd.outcomes[0].adv_pred != pgd.labels).sum()) > int((~pgd.clean_correct).sum())
    # progress counts this rank's points only (5 batches of 40: rank 0 has 0, 2, 4)
    last = N_POINTS - 4 * BATCH_SIZE
    assert json.loads((tmp_path / "rank0-progress.json").read_text()) == [40, 40, last] * 2
    assert json.loads((tmp_path / "rank1-progress.json").read_text()) == [40, 40] * 2
    for rank in (0, 1):
        errors = json.loads((tmp_path / f"rank{rank}-errors.json").read_text())
        assert "every rank must pass the same points and settings" in errors["seed"]
        # rank 1's labels are out of range: both ranks raise its error, none hangs
        assert errors["labels"].startswith("InputError: labels must be class indices")

"""The sub-sampling robustness condition (MMCert, randomized ablation) against exact arithmetic
and brute force.

- ``certified`` against the condition (*) of ``subsampling_bound`` written with Python
  integers and ``Fraction`` (modification, and every split of additions and modifications);
- monotone in the budget; ``largest_budget`` is the largest certified ``t``;
- with one modality and ``p_B = 1 - p_A``, Levine and Feizi's radius;
- the seed's printed formula never certifies more than ours, and less in some cases;
- brute force on tiny inputs: every sequence within Levenshtein distance ``r_i`` of each
  modality (modify, add, delete) or within Hamming distance ``r_i`` (modify only), the exact
  sub-sampling probabilities of a fixed base classifier on both, and the smoothed prediction
  never changes where the condition, fed the exact probabilities, holds.
"""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import numpy as np
import pytest

from bastion.certify.subsampling_bound import (
    TOL,
    Subsampling,
    ablation_radius,
    attack_term,
    certified,
    discretise,
    largest_budget,
    log_comb,
    seed_condition,
)
from bastion.errors import InputError


def exact_slack(p_a: Fraction, p_b: Fraction, sizes, keep, budget, operations) -> Fraction:
    """``(p_A - p_B) - max over attacks (1 + |S'|/|S| - 2|O|/|S|)`` in rationals."""
    total = math.prod(math.comb(n, k) for n, k in zip(sizes, keep, strict=True))
    splits = itertools.product(*[range(r + 1) for r in budget]) if operations == "any" else [
        (0,) * len(budget)]
    worst = None
    for adds in splits:
        s_new = math.prod(math.comb(n + a, k) for n, k, a in zip(sizes, keep, adds, strict=True))
        common = math.prod(math.comb(n - r + a, k)
                           for n, k, r, a in zip(sizes, keep, budget, adds, strict=True))
        term = 1 + Fraction(s_new, total) - 2 * Fraction(common, total)
        worst = term if worst is None or term > worst else worst
    return (p_a - p_b) - worst


def test_log_comb_matches_integers():
    for n in range(0, 40, 3):
        for k in range(-1, n + 2):
            want = math.log(math.comb(n, k)) if 0 <= k <= n else -math.inf
            got = float(log_comb(n, k))
            assert got == want or abs(got - want) < 1e-12 * max(1.0, abs(want))
    # image-sized: C(784, 50) overflows nothing in log space
    assert abs(float(log_comb(784, 50)) - math.log(math.comb(784, 50))) < 1e-9


@pytest.mark.parametrize("operations", ["modify", "any"])
def test_condition_equals_exact_rational(operations):
    rng = random.Random(0)
    agree = disagree_near = certified_count = 0
    for _ in range(3000):
        t = rng.choice([1, 2, 3])
        sizes = tuple(rng.randint(2, 14) for _ in range(t))
        keep = tuple(rng.randint(1, n) for n in sizes)
        budget = tuple(rng.randint(0, n - k + 1) for n, k in zip(sizes, keep, strict=True))
        p_a = rng.random()
        p_b = rng.random() * (1 - p_a)
        setup = Subsampling(sizes, keep)
        got = certified(p_a, p_b, setup, budget, operations)
        slack = exact_slack(Fraction(p_a), Fraction(p_b), sizes, keep, budget, operations)
        if got:
            certified_count += 1
            assert slack > 0, (sizes, keep, budget, p_a, p_b)  # never certify what is not
        if abs(slack) > 1e-9:
            assert got == (slack > 0), (sizes, keep, budget, p_a, p_b, float(slack))
            agree += 1
        else:
            disagree_near += 1
    assert certified_count > 150 and agree > 2900


def test_attack_term_float_equals_exact_for_large_sizes():
    setup = Subsampling((784, 784), (50, 50))
    for budget in [(0, 0), (1, 0), (3, 5), (10, 10)]:
        exact = exact_slack(Fraction(1), Fraction(0), setup.sizes, setup.keep, budget, "modify")
        assert abs((1 - attack_term(setup, budget)) - float(exact)) < 1e-12
    exact = exact_slack(Fraction(1), Fraction(0), (60, 40), (5, 4), (3, 2), "any")
    got = 1 - attack_term(Subsampling((60, 40), (5, 4)), (3, 2), "any")
    assert abs(got - float(exact)) < 1e-12


def test_worst_split_can_be_interior():
    """The attacker's best mix of additions and modifications is not always at an end."""
    sizes, keep, r = (20,), (3,), (6,)
    values = []
    for a in range(r[0] + 1):
        s_new = math.comb(sizes[0] + a, keep[0])
        common = math.comb(sizes[0] - r[0] + a, keep[0])
        values.append(Fraction(s_new - 2 * common, math.comb(sizes[0], keep[0])))
    best = max(range(len(values)), key=values.__getitem__)
    assert 0 < best < r[0]
    got = attack_term(Subsampling(sizes, keep), r, "any")
    assert abs(got - float(1 + values[best])) < 1e-12


@pytest.mark.parametrize("operations", ["modify", "any"])
def test_monotone_and_largest_budget(operations):
    rng = random.Random(1)
    for _ in range(200):
        sizes = (rng.randint(20, 200), rng.randint(20, 200))
        keep = (rng.randint(1, 10), rng.randint(1, 10))
        setup = Subsampling(sizes, keep)
        p_a = 0.5 + 0.5 * rng.random()
        p_b = (1 - p_a) * rng.random()
        w = rng.choice([(1, 1), (1, 2), (1, 0), (0, 1)])
        hi = min(m // wi for m, wi in zip(setup.max_budget(), w, strict=True) if wi)
        if operations == "any":
            hi = min(hi, 30)
        flags = [certified(p_a, p_b, setup, (t * w[0], t * w[1]), operations)
                 for t in range(hi + 1)]
        # a larger budget is never certified where a smaller one is not
        assert all(not b or a for a, b in itertools.pairwise(flags))
        want = (flags.index(False) - 1) if False in flags else hi
        if operations == "modify" or want < hi:
            assert largest_budget(p_a, p_b, setup, w, operations) == want


def test_one_modality_complement_bound_is_randomized_ablation():
    rng = random.Random(2)
    for _ in range(300):
        n = rng.randint(10, 800)
        k = rng.randint(1, min(n, 60))
        p_a = rng.random()
        setup = Subsampling((n,), (k,))
        assert largest_budget(p_a, 1 - p_a, setup, (1,)) == ablation_radius(p_a, n, k)


def test_seed_formula_never_certifies_more_and_sometimes_less():
    rng = random.Random(3)
    ours_only = 0
    for _ in range(3000):
        sizes = (rng.randint(2, 8), rng.randint(2, 8))
        keep = (rng.randint(1, sizes[0]), rng.randint(1, sizes[1]))
        setup = Subsampling(sizes, keep)
        total = setup.total
        # bounds that are not multiples of 1/|S|, where the two roundings differ
        p_a = (rng.randint(0, total) + rng.random()) / total
        p_b = rng.random() * (1 - p_a)
        p_a, p_b = min(p_a, 1.0), max(0.0, p_b)
        budget = (rng.randint(0, sizes[0] - keep[0]), rng.randint(0, sizes[1] - keep[1]))
        a, b = discretise(p_a, p_b, setup)
        ours = certified(a, b, setup, budget)
        seed = seed_condition(p_a, p_b, setup, budget)
        exact = exact_slack(Fraction(p_a), Fraction(p_b), sizes, keep, budget, "modify")
        if seed and exact > 0:
            assert ours or exact_slack(Fraction(a), Fraction(b), sizes, keep, budget,
                                       "modify") <= TOL
        ours_only += ours and not seed
    assert ours_only > 0


def test_discretise_is_exact_and_safe():
    setup = Subsampling((5, 4), (2, 1))  # |S| = 40
    a, b = discretise(0.3001, 0.2999, setup)
    assert Fraction(a) <= Fraction(13, 40) and a > 0.3249  # ceil(12.004) = 13
    assert Fraction(b) >= Fraction(11, 40) and b < 0.2751  # floor(11.996) = 11
    a, b = discretise(0.5, 0.25, setup)  # already multiples: unchanged
    assert (a, b) == (0.5, 0.25)
    big = Subsampling((784,), (50,))
    assert discretise(0.9, 0.05, big) == (0.9, 0.05)  # 1/|S| far below float resolution


def test_bad_input():
    with pytest.raises(InputError, match="keep"):
        Subsampling((10,), (11,))
    with pytest.raises(InputError, match="budget"):
        certified(0.9, 0.1, Subsampling((10,), (2,)), (1, 1))
    with pytest.raises(InputError, match="operations"):
        attack_term(Subsampling((10,), (2,)), (1,), "swap")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="weight"):
        largest_budget(0.9, 0.1, Subsampling((10,), (2,)), (0,))
    with pytest.raises(InputError, match="probability"):
        certified(1.5, 0.1, Subsampling((10,), (2,)), (1,))


# --------------------------------------------------------------------------- brute force

ALPHABET = (0, 1, 2)
CLASSES = 3


def base_classifier(seed: int):
    """A fixed function of the sub-sampled value sequences, biased to class 0."""
    table: dict[tuple, int] = {}
    rng = random.Random(seed)

    def f(z: tuple[tuple[int, ...], ...]) -> int:
        if z not in table:
            table[z] = 0 if rng.random() < 0.8 else rng.randrange(1, CLASSES)
        return table[z]

    return f


def probabilities(f, m: tuple[tuple[int, ...], ...], keep) -> list[Fraction]:
    """Exact ``P(f(Z) = c)`` over uniform sub-samples (order-preserving sub-sequences)."""
    counts = [0] * CLASSES
    per = [list(itertools.combinations(range(len(mi)), k)) for mi, k in zip(m, keep, strict=True)]
    for choice in itertools.product(*per):
        z = tuple(tuple(mi[j] for j in idx) for mi, idx in zip(m, choice, strict=True))
        counts[f(z)] += 1
    total = sum(counts)
    return [Fraction(c, total) for c in counts]


def neighbours(seq: tuple[int, ...], r: int, operations: str, min_len: int) -> set:
    """Every sequence within ``r`` edits (modify, or modify/add/delete) of ``seq``."""
    frontier, seen = {seq}, {seq}
    for _ in range(r):
        nxt = set()
        for s in frontier:
            for i in range(len(s)):
                for v in ALPHABET:
                    if v != s[i]:
                        nxt.add(s[:i] + (v,) + s[i + 1 :])
                if operations == "any" and len(s) - 1 >= min_len:
                    nxt.add(s[:i] + s[i + 1 :])
            if operations == "any":
                for i in range(len(s) + 1):
                    for v in ALPHABET:
                        nxt.add(s[:i] + (v,) + s[i:])
        frontier = nxt - seen
        seen |= nxt
    return seen


def _trial(trial: int, keep: tuple[int, int]):
    """Trial ``trial``'s input (two sequences of 6 and 5 values), base classifier, exact
    class probabilities and top class."""
    rng = random.Random(100 + trial)
    m = (tuple(rng.choice(ALPHABET) for _ in range(6)),
         tuple(rng.choice(ALPHABET) for _ in range(5)))
    f = base_classifier(trial)
    p = probabilities(f, m, keep)
    return m, f, p, max(range(CLASSES), key=p.__getitem__)


@pytest.mark.parametrize("operations", ["modify", "any"])
def test_brute_force_prediction_never_changes_where_certified(operations):
    keep = (1, 1)
    checked = 0
    for trial in range(12):
        m, f, p, top = _trial(trial, keep)
        p_b = max(p[c] for c in range(CLASSES) if c != top)
        if p[top] == p_b:
            continue
        setup = Subsampling((len(m[0]), len(m[1])), keep)
        for budget in [(1, 0), (0, 1), (1, 1), (2, 1), (2, 2)]:
            if not certified(float(p[top]), float(p_b), setup, budget, operations):
                continue
            first = neighbours(m[0], budget[0], operations, keep[0])
            second = neighbours(m[1], budget[1], operations, keep[1])
            for m1, m2 in itertools.product(first, second):
                q = probabilities(f, (m1, m2), keep)
                assert all(q[top] > q[c] for c in range(CLASSES) if c != top), (
                    f"trial {trial}: budget {budget} certified but {(m1, m2)} changes the "
                    f"prediction: {p} -> {q}")
                checked += 1
    assert checked > 1000  # the certificate held somewhere: the check is not vacuous


def test_brute_force_condition_is_needed():
    """Without the certificate, some attack within the budget flips a prediction: the brute
    force can fail (so the test above could)."""
    keep = (1, 1)
    flipped = False
    for trial in range(12):
        m, f, _, top = _trial(trial, keep)
        for m1, m2 in itertools.product(neighbours(m[0], 3, "any", 1),
                                        neighbours(m[1], 3, "any", 1)):
            q = probabilities(f, (m1, m2), keep)
            if any(q[c] >= q[top] for c in range(CLASSES) if c != top):
                flipped = True
                break
        if flipped:
            break
    assert flipped


def test_numpy_inputs_accepted():
    setup = Subsampling((30,), (3,))
    assert certified(0.99, 0.0, setup, (np.int64(1),))


def test_log_comb_ratio_matches_integers():
    from bastion.certify.subsampling_bound import log_comb_ratio

    for n, k in [(10, 3), (784, 50), (1568, 100)]:
        for m in [k - 1, k, n - 7, n, n + 5]:
            got = float(log_comb_ratio(m, n, k))
            if m < k:
                assert got == -math.inf
                continue
            want = Fraction(math.comb(m, k), math.comb(n, k))
            assert abs(math.exp(got) - float(want)) <= 1e-14 * max(1.0, float(want))


@pytest.mark.parametrize("operations", ["modify", "any"])
def test_certified_set_is_closed_under_smaller_budgets(operations):
    """On the whole grid of (r_1, r_2), not only along rays: certified at R implies certified
    at every R' <= R componentwise."""
    rng = random.Random(4)
    for _ in range(20):
        setup = Subsampling((rng.randint(30, 120), rng.randint(30, 120)),
                            (rng.randint(1, 6), rng.randint(1, 6)))
        p_a = 0.7 + 0.3 * rng.random()
        p_b = (1 - p_a) * rng.random()
        grid = np.array([[certified(p_a, p_b, setup, (r1, r2), operations)
                          for r2 in range(16)] for r1 in range(16)])
        for r1 in range(16):
            for r2 in range(16):
                if grid[r1, r2]:
                    assert grid[: r1 + 1, : r2 + 1].all(), (setup, p_a, p_b, r1, r2)

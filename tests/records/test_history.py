"""EpochRecord / History: consecutive epochs, accuracies in [0, 1], exact round trips."""

from __future__ import annotations

import json
import math

import pytest

from bastion.records import MEASURED_KEYS, EpochRecord, History, load_record, save_record


def _rec(epoch: int = 1, **kw) -> EpochRecord:
    base = {"lr": 0.05, "train": {"train_loss": 1.25, "train_acc": 0.5},
            "measured": {"test_clean_acc": 0.75, "test_robust_acc": 0.375},
            "train_seconds": 10.5, "seconds": 12.0, "best_so_far": 0.375}
    return EpochRecord(epoch=epoch, **{**base, **kw})


def _hist(n: int = 3) -> History:
    return History(tuple(_rec(e, best_so_far=0.1 * e) for e in range(1, n + 1)))


def test_flat_line_keeps_its_key_order_and_round_trips():
    r = _rec()
    d = r.to_dict()
    assert list(d) == ["epoch", "train_loss", "train_acc", "lr", "train_seconds",
                       "test_clean_acc", "test_robust_acc", "seconds", "best_so_far"]
    back = EpochRecord.from_dict(json.loads(json.dumps(d)))
    assert back == r and back.to_dict() == d
    assert r["test_robust_acc"] == 0.375 and r.get("missing", 7) == 7 and "lr" in r
    with pytest.raises(KeyError):
        r["missing"]  # noqa: B018
    # before any score best_so_far is -inf, which survives the JSON line
    first = _rec(best_so_far=float("-inf"), measured={})
    assert EpochRecord.from_dict(json.loads(json.dumps(first.to_dict()))) == first


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"epoch": 0}, ValueError, "epoch must be an int >= 1"),
    ({"epoch": 1.0}, ValueError, "epoch must be an int >= 1"),
    ({"epoch": True}, ValueError, "epoch must be an int >= 1"),
    ({"lr": -0.1}, ValueError, "lr must be >= 0"),
    ({"lr": float("nan")}, ValueError, "lr must be >= 0"),
    ({"lr": "0.1"}, TypeError, "lr must be a number"),
    ({"seconds": -1}, ValueError, "seconds must be >= 0"),
    ({"measured": {"test_clean_acc": 1.5}}, ValueError,
     r"test_clean_acc is an accuracy in \[0, 1\], got 1.5"),
    ({"measured": {"test_robust_acc": -0.01}}, ValueError, r"accuracy in \[0, 1\]"),
    ({"measured": {"test_robust_acc": float("nan")}}, ValueError, r"accuracy in \[0, 1\]"),
    ({"measured": {"test_robust_acc": 75.0}}, ValueError, r"accuracy in \[0, 1\]"),
    ({"measured": {"val_acc": 0.5}}, ValueError, "unknown measured key 'val_acc'"),
    ({"train": {"loss": 1.0}}, ValueError, "must start with 'train_'"),
    ({"train": {"train_seconds": 1.0}}, ValueError, "must start with 'train_' and not be"),
    ({"train": {"train_loss": "1"}}, TypeError, "train_loss must be a number"),
    ({"train": {"train_clean_acc": 0.5}, "measured": {"train_clean_acc": 0.4}}, ValueError,
     "is the name of a measured accuracy"),
    ({"train": {"train_robust_acc": 0.5}}, ValueError, "is the name of a measured accuracy"),
    ({"best_so_far": 1.5}, ValueError, r"best_so_far is an accuracy in \[0, 1\]"),
])
def test_epoch_record_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        _rec(**kwargs)


def test_measured_keys_are_the_fixed_point_accuracies():
    assert set(MEASURED_KEYS) == {"test_clean_acc", "test_robust_acc", "train_clean_acc",
                                  "train_robust_acc"}
    r = EpochRecord.from_dict({"epoch": 2, "lr": 0.1, "train_loss": 0.5,
                               "train_robust_acc": 0.25, "test_clean_acc": 0.5})
    assert dict(r.measured) == {"train_robust_acc": 0.25, "test_clean_acc": 0.5}
    assert dict(r.train) == {"train_loss": 0.5}
    with pytest.raises(ValueError, match="needs an 'epoch' key"):
        EpochRecord.from_dict({"lr": 0.1})


def test_history_needs_consecutive_epochs_from_one():
    h = _hist()
    assert [e.epoch for e in h.epochs] == [1, 2, 3] and len(h) == 3
    with pytest.raises(ValueError, match=r"numbered 1, 2, ... consecutively, got \[1, 3\]"):
        History((_rec(1), _rec(3)))
    with pytest.raises(ValueError, match=r"got \[2, 3\]"):
        History((_rec(2), _rec(3)))
    with pytest.raises(ValueError, match=r"got \[1, 1\]"):
        History.of([_rec(1).to_dict(), _rec(1).to_dict()])
    assert History().append(_rec(1)).epochs[0].epoch == 1
    h4 = h.append(_rec(4, best_so_far=0.5))
    assert len(h4) == 4 and len(h) == 3  # frozen: append returns a new history
    with pytest.raises(ValueError, match="epoch 5 cannot follow epoch 3; expected epoch 4"):
        h.append(_rec(5, best_so_far=0.5))
    with pytest.raises(ValueError, match="epoch 2 cannot follow epoch 0"):
        History().append(_rec(2))


def test_best_so_far_is_a_running_maximum():
    with pytest.raises(ValueError, match="best_so_far fell from 0.5"):
        History((_rec(1, best_so_far=0.5), _rec(2, best_so_far=0.4)))
    h = History((_rec(1, best_so_far=float("-inf")), _rec(2, best_so_far=0.4),
                 _rec(3, best_so_far=0.4)))
    assert h.column("best_so_far") == [-math.inf, 0.4, 0.4]


def test_history_round_trips_exactly(tmp_path):
    h = _hist()
    assert History.from_jsonl(h.to_jsonl()).to_dicts() == h.to_dicts()
    assert History.from_jsonl(h.to_jsonl()) == h
    assert History.of(h.to_dicts()) == h
    assert History.from_dict(json.loads(json.dumps(h.to_dict()))) == h
    path = tmp_path / "history.json"
    save_record(path, h)
    assert json.loads(path.read_text())["record"] == "History"
    assert load_record(History, path) == h
    rec_path = tmp_path / "epoch.json"
    save_record(rec_path, h.epochs[1])
    assert load_record(EpochRecord, rec_path) == h.epochs[1]
    assert h.column("test_clean_acc") == [0.75] * 3 and h.column("nope") == [None] * 3
    with pytest.raises(ValueError, match="expected a History record"):
        History.from_dict({"record": "EvalResult", "epochs": []})
    with pytest.raises(ValueError, match="unknown fields for History"):
        History.from_dict({"epochs": [], "runs": 2})

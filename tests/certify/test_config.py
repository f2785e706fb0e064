"""CertifyConfig: every field validated with a message naming its range; CLI options."""

from __future__ import annotations

import dataclasses

import pytest

from bastion.certify.config import CertifyConfig
from bastion.cli import build_parser
from bastion.runs import certify_record_path, certify_run


@pytest.mark.parametrize(("field", "value", "words"), [
    ("noise", "cauchy", "valid choices: gaussian, laplace, uniform"),
    ("sigma", 0.0, "sigma must be a finite number > 0"),
    ("sigma", float("inf"), "sigma must be a finite number > 0"),
    ("n0", 0, "n0 must be an int >= 1"),
    ("n", 2.5, "n must be an int >= 1"),
    ("alpha", 0.0, "alpha must be a number in (0, 1)"),
    ("alpha", 1.0, "alpha must be a number in (0, 1)"),
    ("n_inputs", 0, "n_inputs must be an int >= 1 or None"),
    ("skip", 0, "skip must be an int >= 1"),
    ("radius", 0.0, "radius must be a finite number > 0"),
    ("two_class", "yes", "two_class must be a bool"),
    ("batch_size", 0, "batch_size must be an int >= 1 or None"),
    ("precision", "fp16", "valid choices: bf16, fp32"),
    ("checkpoint", "first", "valid choices: best, last"),
    ("seed", -1, "seed must be an int >= 0"),
    ("seed", 2**32, "seed must be in [0, 2^32)"),
    ("device", "", "device must be a non-empty name"),
])
def test_every_field_is_validated(field: str, value: object, words: str) -> None:
    with pytest.raises(ValueError) as err:
        CertifyConfig(**{field: value})
    assert words in str(err.value)


def test_defaults_help_and_exclusions() -> None:
    cfg = CertifyConfig()
    assert (cfg.noise, cfg.sigma, cfg.n0, cfg.n, cfg.alpha) == ("gaussian", 0.25, 100,
                                                                 100_000, 0.001)
    assert all(f.metadata.get("help") for f in dataclasses.fields(CertifyConfig))
    with pytest.raises(TypeError):
        CertifyConfig("gaussian")  # type: ignore[misc]  # keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="exclude each other"):
        CertifyConfig(radius=0.5, two_class=True)
    assert CertifyConfig(n_inputs=None, batch_size=None).n_inputs is None


def test_file_name_names_every_setting_that_changes_the_rows(tmp_path) -> None:
    base = CertifyConfig()
    assert base.file_tag() == ("gaussian-sigma0.25-n0_100-n100000-alpha0.001-seed0-skip20-"
                               "inputs500-fp32-last")
    changes = dict(noise="laplace", sigma=0.5, n0=50, n=1000, alpha=0.01, seed=3, skip=5,
                   n_inputs=100, radius=0.25, precision="bf16", checkpoint="best")
    names = {base.file_tag()}
    for k, v in changes.items():
        names.add(dataclasses.replace(base, **{k: v}).file_tag())
    names.add(dataclasses.replace(base, two_class=True).file_tag())
    names.add(dataclasses.replace(base, n_inputs=None).file_tag())
    assert len(names) == len(changes) + 3  # each setting gives another name
    # numbers are exact, not rounded to 6 digits
    assert (dataclasses.replace(base, sigma=0.1234567).file_tag()
            != dataclasses.replace(base, sigma=0.1234568).file_tag())
    assert certify_record_path(tmp_path, base) == tmp_path / "certify" / (
        base.file_tag() + ".jsonl")


def test_cli_options_come_from_the_fields() -> None:
    p = build_parser()
    args = p.parse_args(["certify", "run"])
    for f in dataclasses.fields(CertifyConfig):
        assert getattr(args, f.name) == f.default
    args = p.parse_args(["certify", "run", "--n0", "7", "--n-inputs", "3", "--two-class",
                         "--batch-size", "16", "--noise", "laplace", "--precision", "bf16",
                         "--checkpoint", "best", "--seed", "4", "--radius", "0.5",
                         "--sigma", "0.5", "--alpha", "0.01", "--skip", "2", "--n", "99",
                         "--device", "cpu", "--out", "x.jsonl"])
    assert (args.n0, args.n_inputs, args.two_class, args.batch_size) == (7, 3, True, 16)
    assert (args.noise, args.precision, args.checkpoint, args.seed) == ("laplace", "bf16",
                                                                       "best", 4)
    assert (args.radius, args.sigma, args.alpha, args.skip, args.n) == (0.5, 0.5, 0.01, 2, 99)
    assert args.out == "x.jsonl" and args.compare == []
    with pytest.raises(SystemExit):
        p.parse_args(["certify", "run", "--noise", "cauchy"])


def test_certify_run_wants_a_config(tmp_path) -> None:
    with pytest.raises(TypeError, match="CertifyConfig"):
        certify_run(tmp_path, {"sigma": 0.25})  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="run folder"):
        certify_run(tmp_path / "none", CertifyConfig())
    assert list(tmp_path.iterdir()) == []

"""Every record of bastion: frozen dataclasses with validation and a JSON round-trip.

``StepOutput``/``StepContext`` (a training step), ``History``/``EpochRecord`` (a run),
``EvalResult``/``AttackOutcome`` (attacks on fixed points), ``Certificate`` (what every
certifier returns) and ``CertificationRow`` (one line of a resumable certification). This
package imports nothing of bastion but ``bastion.types``.
"""

from bastion.records.certificate import Certificate
from bastion.records.evaluation import AttackOutcome, EvalResult
from bastion.records.history import MEASURED_KEYS, EpochRecord, History
from bastion.records.io import (
    atomic_write_bytes,
    atomic_write_json,
    load_record,
    record_from_dict,
    record_to_dict,
    save_record,
)
from bastion.records.rows import CertificationRow
from bastion.records.step import StepContext, StepOutput

__all__ = [
    "MEASURED_KEYS",
    "AttackOutcome",
    "Certificate",
    "CertificationRow",
    "EpochRecord",
    "EvalResult",
    "History",
    "StepContext",
    "StepOutput",
    "atomic_write_bytes",
    "atomic_write_json",
    "load_record",
    "record_from_dict",
    "record_to_dict",
    "save_record",
]

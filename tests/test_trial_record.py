"""The schema of what a study stores (``nas.trial_record``): one home for the key names, read
back as ``TrialRecord``, and documented in docs/file-formats.md."""

from __future__ import annotations

from pathlib import Path

from nas.trial_record import STATES, State, StudyKey, TrialKey, TrialRecord, screened_attrs

DOCS = Path(__file__).resolve().parent.parent / "docs" / "file-formats.md"


def _names(namespace: type) -> list[str]:
    return [v for k, v in vars(namespace).items() if k.isupper() and isinstance(v, str)]


def test_every_stored_name_is_documented() -> None:
    text = DOCS.read_text()
    for name in _names(TrialKey) + _names(StudyKey) + list(STATES):
        assert f"`{name}`" in text, name


def test_a_record_reads_what_a_trial_stored() -> None:
    attrs = {
        **screened_attrs("a", "c", 1.5, 2048.0, None, None, {"max_latency_ms": -0.5}),
        TrialKey.STATE: State.COMPLETE,
        TrialKey.FIDELITY_EPOCHS: 3,
        "train_accuracy": 0.9,  # a JobResult field: not part of the record
    }
    r = TrialRecord.from_attrs(attrs)
    assert (r.arch, r.canonical, r.state, r.fidelity_epochs) == ("a", "c", "complete", 3)
    assert r.size_bytes == 2048.0 and r.violations == {"max_latency_ms": -0.5}
    assert r.attempts == 1 and r.pid is None  # defaults of keys a trial lacks
    exact = TrialRecord.from_attrs({**attrs, TrialKey.EXACT_SIZE_BYTES: 1000})
    assert exact.size_bytes == 1000


def test_trainings_of_old_and_new_records() -> None:
    history = [{"epochs": 1, "accuracy": 0.5}, {"epochs": 3, "accuracy": 0.7}]
    assert TrialRecord(fidelity_history=history).trainings(0.7, 3) == [(1, 0.5), (3, 0.7)]
    # written before fidelity_history existed: one training at fidelity_epochs (else the default)
    assert TrialRecord(state=State.COMPLETE, fidelity_epochs=2).trainings(0.6, 3) == [(2, 0.6)]
    assert TrialRecord(state=State.FAILED).trainings(None, 3) == [(3, None)]
    interrupted = TrialRecord(state=State.FAILED, error="interrupted; re-queued on resume")
    assert interrupted.trainings(None, 3) == []
    assert TrialRecord(state=State.INFEASIBLE).trainings(None, 3) == []

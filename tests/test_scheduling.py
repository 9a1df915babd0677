"""`make test` hands out whole files, but a directory whose files share a trained model as one (tests/scheduling.py)."""

from __future__ import annotations

from tests.scheduling import FilesSharingATrainedModelTogether


def scope(nodeid: str) -> str:
    # The scope of a test reads its node id alone: no worker or config is needed to ask it.
    scheduler = FilesSharingATrainedModelTogether.__new__(FilesSharingATrainedModelTogether)
    return scheduler._split_scope(nodeid)


def test_the_files_sharing_a_trained_model_go_to_one_worker_and_the_others_file_by_file() -> None:
    assert scope("tests/classifier/test_add_model.py::test_a") == scope("tests/classifier/test_loto.py::test_b")
    assert scope("tests/verifier/test_verifier_training.py::t") == scope("tests/verifier/test_verifier_service.py::t")
    assert scope("tests/classifier/test_loto.py::t") != scope("tests/verifier/test_verifier_service.py::t")
    assert scope("tests/router/test_admission.py::test_a") == scope("tests/router/test_admission.py::test_b[x]")
    assert scope("tests/router/test_admission.py::t") != scope("tests/router/test_budgets.py::t")

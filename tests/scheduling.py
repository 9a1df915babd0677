"""How `make test`'s `--dist loadfile` hands out the test files: one file to a worker at a time, except the
directories whose files share a model trained by a session-scoped fixture, each of which goes to one worker whole.
Handed out file by file, both workers trained the same model (tests/classifier's small_model, tests/verifier's
small_verifier: 15-35 s each), as each worker's session is its own."""

from __future__ import annotations

from xdist.scheduler import LoadFileScheduling

# Directories, as their tests' node ids begin, whose test files share a trained model.
SHARING_A_TRAINED_MODEL = ("tests/classifier/", "tests/verifier/")


class FilesSharingATrainedModelTogether(LoadFileScheduling):
    def _split_scope(self, nodeid: str) -> str:
        return next((d for d in SHARING_A_TRAINED_MODEL if nodeid.startswith(d)), super()._split_scope(nodeid))

"""The trained artefact at serving time: one onnxruntime session that maps a prompt's token ids (the whole prompt,
bounded) and its whole-prompt features to the predicted probability that each known model answers correctly.
Needs only onnxruntime, tokenizers and numpy."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.classifier.abilities import AddedModels, read_added, trained_abilities
from services.classifier.features import prompt_features
from services.classifier.text import PromptTokenizer

MODEL_FILE = "model.onnx"
FEATURES_INPUT = "prompt_features"
TOKEN_IDS_INPUT = "token_ids"
TOKEN_MASK_INPUT = "token_mask"
# What the graph expects (training/graph.py); metadata.json names it, so an artefact of another pipeline is refused
# at load with the command that rebuilds it instead of failing on its first prompt.
ARTEFACT_FORMAT = "static-embedding-v1"
METADATA_FILE = "metadata.json"
TOKENIZER_FILE = "tokenizer.json"


class ArtefactMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class Metadata:
    version: str
    models: list[str]
    head_tokens: int
    tail_tokens: int
    raw: dict

    @classmethod
    def read(cls, model_dir: Path) -> Metadata:
        raw = json.loads((model_dir / METADATA_FILE).read_text())
        trunc = raw["truncation"]
        return cls(raw["version"], list(raw["models"]), int(trunc["head_tokens"]), int(trunc["tail_tokens"]), raw)


def check_artefacts(model_dir: Path) -> None:
    missing = [f for f in (MODEL_FILE, METADATA_FILE, TOKENIZER_FILE) if not (model_dir / f).is_file()]
    if missing:
        raise ArtefactMissing(
            f"classifier artefacts missing in {model_dir} ({', '.join(missing)}): run `make train-classifier`"
        )
    found = json.loads((model_dir / METADATA_FILE).read_text()).get("format")
    if found != ARTEFACT_FORMAT:
        raise ArtefactMissing(
            f"classifier artefacts in {model_dir} are of format {found!r}, this code serves {ARTEFACT_FORMAT!r}: "
            "run `make train-classifier`"
        )


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads must not spin: on 2 cores they would starve the event loop serving gRPC.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class QualityModel:
    def __init__(
        self,
        model_dir: Path,
        threads: int = 2,
        head_tokens: int | None = None,
        tail_tokens: int | None = None,
        token_budget: int = 1024,
        small_batch: int = 0,
    ) -> None:
        """`small_batch` > 0 (with threads > 1): runs of at most that many prompts use a second, single-threaded
        session. Waking a second intra-op thread for one short prompt costs more CPU than it saves time."""
        check_artefacts(model_dir)
        self.token_budget = token_budget
        self.metadata = Metadata.read(model_dir)
        self.added = AddedModels(self.metadata.models, trained_abilities(self.metadata.raw), read_added(model_dir))
        self.models = self.metadata.models + self.added.names
        self.version = self.metadata.version + (f"+{self.added.fingerprint()}" if self.added.names else "")
        self.tokenizer = PromptTokenizer(
            model_dir / TOKENIZER_FILE,
            self.metadata.head_tokens if head_tokens is None else head_tokens,
            self.metadata.tail_tokens if tail_tokens is None else tail_tokens,
        )
        self._session = session(model_dir / MODEL_FILE, threads)
        self.small_batch = small_batch if threads > 1 else 0
        self._small_session = session(model_dir / MODEL_FILE, 1) if self.small_batch else self._session

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), len(self.models)] probabilities of a correct answer: the trained heads', then the
        models added from outcome files (abilities.py)."""
        out = np.zeros((len(texts), len(self.metadata.models)), dtype=np.float32)
        seqs = [self.tokenizer.body(t) for t in texts]
        features = prompt_features(texts)
        # Runs of similar length, each at most token_budget padded tokens: little work spent on padding, and
        # activation memory (a float vector per token) bounded whatever the batch.
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end + 1 - start) * len(seqs[order[end]]) <= self.token_budget:
                end += 1
            idx = order[start:end]
            token_ids, mask = self.tokenizer.pad([seqs[i] for i in idx])
            inputs = {TOKEN_IDS_INPUT: token_ids, TOKEN_MASK_INPUT: mask, FEATURES_INPUT: features[idx]}
            run = self._small_session if len(idx) <= self.small_batch else self._session
            out[idx] = run.run(["quality"], inputs)[0]
            start = end
        return self.added.extend(out)

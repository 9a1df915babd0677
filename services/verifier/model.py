"""The trained verifier at serving time: one onnxruntime session mapping (prompt, answer) pairs to P(the answer
is good). Needs only onnxruntime, tokenizers and numpy; tokenises and computes answer features exactly as the
training did."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.classifier.model import METADATA_FILE, MODEL_FILE, TOKENIZER_FILE, session
from services.classifier.text import PromptTokenizer
from services.verifier.features import features_matrix

ARTEFACT_FILES = (MODEL_FILE, METADATA_FILE, TOKENIZER_FILE)


def missing_artefacts(model_dir: Path) -> list[str]:
    return [f for f in ARTEFACT_FILES if not (model_dir / f).is_file()]


class Verifier:
    def __init__(self, model_dir: Path, threads: int = 2, token_budget: int = 4096) -> None:
        missing = missing_artefacts(model_dir)
        if missing:
            raise FileNotFoundError(
                f"verifier artefacts missing in {model_dir} ({', '.join(missing)}): run `make train-verifier`"
            )
        self.metadata = json.loads((model_dir / METADATA_FILE).read_text())
        self.version: str = self.metadata["version"]
        trunc = self.metadata["truncation"]
        self.tokenizer = PromptTokenizer(
            model_dir / TOKENIZER_FILE, int(trunc["head_tokens"]), int(trunc["tail_tokens"])
        )
        self.token_budget = token_budget
        self._session = session(model_dir / MODEL_FILE, threads)

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """[len(pairs)] probabilities that each answer is a good answer to its prompt."""
        out = np.zeros(len(pairs), dtype=np.float32)
        prompt_ids = [self.tokenizer.ids(p) for p, _ in pairs]
        answer_ids = [self.tokenizer.ids(a) for _, a in pairs]
        width = [max(len(p), len(a)) for p, a in zip(prompt_ids, answer_ids, strict=True)]
        # Runs of similar length, at most token_budget padded tokens (prompts and answers): bounded memory.
        order = sorted(range(len(pairs)), key=lambda i: width[i])
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and 2 * (end + 1 - start) * width[order[end]] <= self.token_budget:
                end += 1
            idx = order[start:end]
            input_ids, mask = self.tokenizer.pad([prompt_ids[i] for i in idx] + [answer_ids[i] for i in idx])
            features = features_matrix([pairs[i][0] for i in idx], [pairs[i][1] for i in idx])
            good = self._session.run(["good"], {"input_ids": input_ids, "attention_mask": mask, "features": features})
            out[idx] = good[0][:, 0]
            start = end
        return out

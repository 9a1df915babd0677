"""Blocking generation with onnxruntime-genai. It runs in a worker thread (see gateways/local.py); a
threading.Event checked between tokens lets the caller stop it early."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime_genai as og

from services.providers.local_model.stop_text import StopText

Turn = tuple[str, str]  # (role, content)
# A 135M model decoding greedily loops on the same line; a mild penalty keeps its short answers readable.
REPETITION_PENALTY = 1.2


class PromptTooLong(ValueError):
    """The prompt alone fills the model's context window."""


@dataclass
class Outcome:
    """Filled while a generation runs; final once its iterator is exhausted."""

    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str = "stop"


class LocalEngine:
    def __init__(self, model_dir: Path, threads: int = 2) -> None:
        config = og.Config(str(model_dir))
        config.clear_providers()  # CPU
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.context_length = int(json.loads((model_dir / "genai_config.json").read_text())["model"]["context_length"])

    def stream(
        self,
        turns: Sequence[Turn],
        max_tokens: int,
        outcome: Outcome,
        temperature: float | None = None,
        stop: threading.Event | None = None,
        stop_sequences: Sequence[str] = (),
    ) -> Iterator[str]:
        """Yield text pieces as they are decoded, cut before the first of `stop_sequences` written (finish reason
        "stop"); `outcome` holds the token counts, every token generated (those that wrote the stop sequence too, as
        OpenAI bills them), and finish reason."""
        prompt = self.tokenizer.apply_chat_template(
            json.dumps([{"role": r, "content": c} for r, c in turns]), add_generation_prompt=True
        )
        tokens = self.tokenizer.encode(prompt)
        outcome.input_tokens = len(tokens)
        if len(tokens) >= self.context_length:
            raise PromptTooLong(f"prompt of {len(tokens)} tokens exceeds the context of {self.context_length}")
        max_tokens = min(max_tokens, self.context_length - len(tokens))
        params = og.GeneratorParams(self.model)
        # Temperature 0 or unset means greedy decoding, as with OpenAI.
        sampling = {"do_sample": True, "temperature": temperature} if temperature else {"do_sample": False}
        params.set_search_options(
            max_length=len(tokens) + max_tokens, repetition_penalty=REPETITION_PENALTY, **sampling
        )
        generator = og.Generator(self.model, params)
        generator.append_tokens(tokens)
        decoder = self.tokenizer.create_stream()
        eos = set(self.tokenizer.eos_token_ids)
        text = StopText(stop_sequences)
        outcome.finish_reason = "length"
        while not generator.is_done():
            if stop is not None and stop.is_set():
                outcome.finish_reason = "cancelled"
                return
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in eos:
                outcome.finish_reason = "stop"
                break
            outcome.output_tokens += 1
            if piece := text.feed(decoder.decode(token)):
                yield piece
            if text.stopped:
                outcome.finish_reason = "stop"
                return
        if rest := text.rest():
            yield rest

    def generate_sync(self, turns: Sequence[Turn], max_tokens: int) -> tuple[str, Outcome]:
        outcome = Outcome()
        text = "".join(self.stream(turns, max_tokens, outcome))
        return text, outcome

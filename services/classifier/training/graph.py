"""Assemble the served graph: the int8 encoder followed by the heads (MatMul + Add + Sigmoid), so a single
onnxruntime run scores every model for a batch of prompts."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper, numpy_helper

from services.classifier.training.heads import Heads


def attach_heads(encoder: Path, heads: Heads, out: Path) -> None:
    model = onnx.load(str(encoder))
    graph = model.graph
    graph.initializer.extend(
        [numpy_helper.from_array(heads.weights, "head_weights"), numpy_helper.from_array(heads.bias, "head_bias")]
    )
    graph.node.extend(
        [
            helper.make_node("MatMul", ["embedding", "head_weights"], ["head_matmul"], name="head_matmul"),
            helper.make_node("Add", ["head_matmul", "head_bias"], ["head_logits"], name="head_add"),
            helper.make_node("Sigmoid", ["head_logits"], ["quality"], name="head_sigmoid"),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("quality", TensorProto.FLOAT, ["batch", len(heads.models)]))
    onnx.checker.check_model(model)
    onnx.save(model, str(out))

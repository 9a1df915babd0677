"""Assemble the served graph: the int8 encoder followed by linear heads over the embedding and the whole-prompt
features (MatMul + MatMul + Add + Sigmoid), so a single onnxruntime run scores every model for a batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.classifier.model import FEATURES_INPUT


def attach_heads(
    encoder: Path, embedding_weights: np.ndarray, feature_weights: np.ndarray, bias: np.ndarray, out: Path
) -> None:
    """embedding_weights [384, models], feature_weights [features, models] (on raw features), bias [models]."""
    model = onnx.load(str(encoder))
    graph = model.graph
    graph.initializer.extend(
        [
            numpy_helper.from_array(embedding_weights.astype(np.float32), "head_weights"),
            numpy_helper.from_array(feature_weights.astype(np.float32), "feature_weights"),
            numpy_helper.from_array(bias.astype(np.float32), "head_bias"),
        ]
    )
    graph.input.append(
        helper.make_tensor_value_info(FEATURES_INPUT, TensorProto.FLOAT, ["batch", feature_weights.shape[0]])
    )
    graph.node.extend(
        [
            helper.make_node("MatMul", ["embedding", "head_weights"], ["head_matmul"], name="head_matmul"),
            helper.make_node("MatMul", [FEATURES_INPUT, "feature_weights"], ["feature_matmul"], name="feature_matmul"),
            helper.make_node("Add", ["head_matmul", "feature_matmul"], ["head_sum"], name="head_sum"),
            helper.make_node("Add", ["head_sum", "head_bias"], ["head_logits"], name="head_add"),
            helper.make_node("Sigmoid", ["head_logits"], ["quality"], name="head_sigmoid"),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("quality", TensorProto.FLOAT, ["batch", bias.shape[0]]))
    onnx.checker.check_model(model)
    onnx.save(model, str(out))

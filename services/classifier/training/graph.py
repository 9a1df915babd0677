"""Assemble the served graph: the whole prompt's static embedding (an int8 token table gathered, summed over the
prompt's tokens and L2-normalised, static.py) followed by linear heads over it and the whole-prompt features
(MatMul + MatMul + Add + Sigmoid), so a single onnxruntime run scores every model for a batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.classifier.model import FEATURES_INPUT, TOKEN_IDS_INPUT, TOKEN_MASK_INPUT

OPSET = 17
# Added to the norm: an empty prompt's embedding is zeros, never a division by zero.
NORM_EPSILON = 1e-9


def build_graph(
    table: np.ndarray,
    scale: np.ndarray,
    embedding_weights: np.ndarray,
    feature_weights: np.ndarray,
    bias: np.ndarray,
    out: Path,
) -> None:
    """table int8 [vocab, dim] with scale [vocab, 1]; embedding_weights [dim, models], feature_weights
    [features, models] (on raw features), bias [models]. Inputs: token_ids and token_mask [batch, tokens] (int64,
    right-padded), prompt_features [batch, features]; output quality [batch, models]."""
    initializers = [
        numpy_helper.from_array(table.astype(np.int8), "static_table"),
        numpy_helper.from_array(scale.astype(np.float32), "static_scale"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "token_axis_last"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "token_axis"),
        numpy_helper.from_array(np.array(NORM_EPSILON, dtype=np.float32), "norm_epsilon"),
        numpy_helper.from_array(embedding_weights.astype(np.float32), "head_weights"),
        numpy_helper.from_array(feature_weights.astype(np.float32), "feature_weights"),
        numpy_helper.from_array(bias.astype(np.float32), "head_bias"),
    ]
    node = helper.make_node
    nodes = [
        node("Gather", ["static_table", TOKEN_IDS_INPUT], ["token_q"], name="static_gather_q"),
        node("Cast", ["token_q"], ["token_f"], name="static_cast", to=TensorProto.FLOAT),
        node("Gather", ["static_scale", TOKEN_IDS_INPUT], ["token_s"], name="static_gather_scale"),
        node("Mul", ["token_f", "token_s"], ["token_vectors"], name="static_rescale"),
        node("Cast", [TOKEN_MASK_INPUT], ["mask_f"], name="mask_cast", to=TensorProto.FLOAT),
        node("Unsqueeze", ["mask_f", "token_axis_last"], ["mask_3d"], name="mask_unsqueeze"),
        node("Mul", ["token_vectors", "mask_3d"], ["token_masked"], name="static_mask"),
        node("ReduceSum", ["token_masked", "token_axis"], ["static_sum"], name="static_sum", keepdims=0),
        node("ReduceL2", ["static_sum"], ["static_norm"], name="static_norm", axes=[1], keepdims=1),
        node("Add", ["static_norm", "norm_epsilon"], ["static_norm_eps"], name="static_norm_eps"),
        node("Div", ["static_sum", "static_norm_eps"], ["embedding"], name="static_normalise"),
        node("MatMul", ["embedding", "head_weights"], ["head_matmul"], name="head_matmul"),
        node("MatMul", [FEATURES_INPUT, "feature_weights"], ["feature_matmul"], name="feature_matmul"),
        node("Add", ["head_matmul", "feature_matmul"], ["head_sum"], name="head_sum"),
        node("Add", ["head_sum", "head_bias"], ["head_logits"], name="head_add"),
        node("Sigmoid", ["head_logits"], ["quality"], name="head_sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [
            helper.make_tensor_value_info(TOKEN_IDS_INPUT, TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info(TOKEN_MASK_INPUT, TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info(FEATURES_INPUT, TensorProto.FLOAT, ["batch", feature_weights.shape[0]]),
        ],
        [helper.make_tensor_value_info("quality", TensorProto.FLOAT, ["batch", bias.shape[0]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="llmrouter")
    model.ir_version = 8  # onnxruntime reads up to the version its opset 17 shipped with
    onnx.checker.check_model(model)
    onnx.save(model, str(out))

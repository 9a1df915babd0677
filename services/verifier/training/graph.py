"""The served graph: the classifier's int8 encoder run once over prompts and answers together (inputs
`input_ids`, `attention_mask` [2 x batch, seq]: the batch's prompts, then its answers), the two halves
joined with the answer features ([batch, features]) and the logistic head: output `good` [batch, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.classifier.training.encoder import EMBEDDING_DIM
from services.verifier.features import FEATURE_NAMES
from services.verifier.training.head import BLOCKS, Head


def attach_head(encoder: Path, head: Head, out: Path) -> None:
    model = onnx.load(str(encoder))
    graph = model.graph
    graph.input.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", len(FEATURE_NAMES)]))
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([2, -1, EMBEDDING_DIM], dtype=np.int64), "pair_shape"),
            numpy_helper.from_array(np.array(0, dtype=np.int64), "prompt_half"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "answer_half"),
            numpy_helper.from_array(head.weights.reshape(-1, 1), "verifier_weights"),
            numpy_helper.from_array(np.array([head.bias], dtype=np.float32), "verifier_bias"),
        ]
    )
    parts = {
        "prompt": "prompt_embedding",
        "answer": "answer_embedding",
        "product": "pair_product",
        "features": "features",
    }
    nodes = [
        helper.make_node("Reshape", ["embedding", "pair_shape"], ["pair_embedding"], name="pair_reshape"),
        helper.make_node("Gather", ["pair_embedding", "prompt_half"], ["prompt_embedding"], name="prompt_half", axis=0),
        helper.make_node("Gather", ["pair_embedding", "answer_half"], ["answer_embedding"], name="answer_half", axis=0),
    ]
    if "product" in head.blocks:
        nodes.append(
            helper.make_node("Mul", ["prompt_embedding", "answer_embedding"], ["pair_product"], name="product")
        )
    nodes += [
        helper.make_node("Concat", [parts[b] for b in BLOCKS if b in head.blocks], ["design"], name="design", axis=1),
        helper.make_node("MatMul", ["design", "verifier_weights"], ["verifier_matmul"], name="verifier_matmul"),
        helper.make_node("Add", ["verifier_matmul", "verifier_bias"], ["verifier_logit"], name="verifier_add"),
        helper.make_node("Sigmoid", ["verifier_logit"], ["good"], name="verifier_sigmoid"),
    ]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("good", TensorProto.FLOAT, ["batch", 1]))
    onnx.checker.check_model(model)
    onnx.save(model, str(out))

"""Writes the tiny ONNX models of worker/tests/online_ml.rs (committed next to this script).

    python3 -m pip install onnx   # the `onnx` package from PyPI (only to regenerate the files)
    python3 worker/tests/data/ml/make_models.py

Weights, thresholds and leaf values are powers of two (or sums of them), so that every score is
exact in f32 and the tests can compare the hand-computed values with `==`.
"""

from pathlib import Path

import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
OPSET = [helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 3)]


def save(graph, name):
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="sluice-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, HERE / name)
    print("wrote", HERE / name)


def linear():
    """y = 2 a - 0.5 b + 1, as a network exporter writes it: MatMul + Add on [N, 2] floats."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1], [2.0, -0.5])
    b = helper.make_tensor("b", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [x],
        [y],
        initializer=[w, b],
    )
    save(graph, "linear.onnx")


def trees():
    """A binary tree-ensemble classifier (ai.onnx.ml TreeEnsembleClassifier), no post-transform.

    Tree 0: a <= 10 ? 0.25 : 0.5
    Tree 1: b < 5 ? 0.125 : (a > 20 ? 0.375 : 0.25)

    All leaves add to class id 0 with two class labels: the binary layout of the ONNX-ML spec,
    where the sum s of the leaves is the positive class's score and the output `probabilities`
    is [1 - s, s].
    """
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])
    probabilities = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])
    # (tree, node, mode, feature, threshold, true node, false node)
    nodes = [
        (0, 0, "BRANCH_LEQ", 0, 10.0, 1, 2),
        (0, 1, "LEAF", 0, 0.0, 0, 0),
        (0, 2, "LEAF", 0, 0.0, 0, 0),
        (1, 0, "BRANCH_LT", 1, 5.0, 1, 2),
        (1, 1, "LEAF", 0, 0.0, 0, 0),
        (1, 2, "BRANCH_GT", 0, 20.0, 3, 4),
        (1, 3, "LEAF", 0, 0.0, 0, 0),
        (1, 4, "LEAF", 0, 0.0, 0, 0),
    ]
    # (tree, node, weight)
    leaves = [(0, 1, 0.25), (0, 2, 0.5), (1, 1, 0.125), (1, 3, 0.375), (1, 4, 0.25)]
    node = helper.make_node(
        "TreeEnsembleClassifier",
        ["x"],
        ["label", "probabilities"],
        domain="ai.onnx.ml",
        classlabels_int64s=[0, 1],
        nodes_treeids=[n[0] for n in nodes],
        nodes_nodeids=[n[1] for n in nodes],
        nodes_modes=[n[2] for n in nodes],
        nodes_featureids=[n[3] for n in nodes],
        nodes_values=[n[4] for n in nodes],
        nodes_truenodeids=[n[5] for n in nodes],
        nodes_falsenodeids=[n[6] for n in nodes],
        class_treeids=[leaf[0] for leaf in leaves],
        class_nodeids=[leaf[1] for leaf in leaves],
        class_ids=[0 for _ in leaves],
        class_weights=[leaf[2] for leaf in leaves],
        post_transform="NONE",
    )
    graph = helper.make_graph([node], "trees", [x], [label, probabilities])
    save(graph, "trees.onnx")


if __name__ == "__main__":
    linear()
    trees()

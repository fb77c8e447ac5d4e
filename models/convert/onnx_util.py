"""Small helpers for writing ONNX graphs by hand with the onnx helper API."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class Graph:
    """Accumulates nodes and initializers; `op` returns the output name."""

    def __init__(self):
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, hint):
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, array, hint="c"):
        n = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array), n))
        return n

    def op(self, op_type, inputs, hint=None, outputs=1, **attrs):
        outs = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if outputs == 1 else outs

    def rename(self, name, new):
        """Make the node producing `name` produce `new` instead (for graph outputs)."""
        for node in self.nodes:
            for i, o in enumerate(node.output):
                if o == name:
                    node.output[i] = new
            for i, x in enumerate(node.input):
                if x == name:
                    node.input[i] = new
        return new

    def model(self, inputs, outputs, doc):
        graph = helper.make_graph(self.nodes, "moonlens", inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="moonlens-convert", doc_string=doc)
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def f32_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def i64_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.INT64, shape)

"""A scalar autograd engine: microgpt's `Value`, with an iterative topological sort.

Each node stores its children and the local derivative with respect to each (data, not closures);
`backward` applies the chain rule `child.grad += local_grad * node.grad` in reverse topological order.

Bit-exactness with Karpathy's script: every operation computes the same floating-point expression in
the same order, and the topological order is the same post-order depth-first walk, so every gradient
accumulates its terms in the same order. Plain-number operands are not wrapped in leaf nodes (microgpt
wraps them); such a leaf has no children and its gradient is never read, so leaving it out changes
neither any value nor the order of any other node. Standard library only.
"""

import gc
import math
from contextlib import contextmanager


class Value:
    __slots__ = ('data', 'grad', '_children', '_local_grads')

    def __init__(self, data, children=(), local_grads=()):
        self.data = data
        self.grad = 0
        self._children = children
        self._local_grads = local_grads

    def __add__(self, other):
        if isinstance(other, Value):
            return Value(self.data + other.data, (self, other), (1, 1))
        return Value(self.data + other, (self,), (1,))

    def __mul__(self, other):
        if isinstance(other, Value):
            return Value(self.data * other.data, (self, other), (other.data, self.data))
        return Value(self.data * other, (self,), (other,))

    def __pow__(self, exponent):
        return Value(self.data ** exponent, (self,), (exponent * self.data ** (exponent - 1),))

    def log(self):
        return Value(math.log(self.data), (self,), (1 / self.data,))

    def exp(self):
        out = math.exp(self.data)
        return Value(out, (self,), (out,))

    def relu(self):
        return Value(max(0, self.data), (self,), (float(self.data > 0),))

    def relu2(self):
        """Squared ReLU, relu(x)**2, as one node: d/dx = 2 * relu(x)."""
        r = max(0.0, self.data)
        return Value(r * r, (self,), (2 * r,))

    def __neg__(self): return self * -1
    def __radd__(self, other): return self + other
    def __sub__(self, other): return self + (-other)
    def __rsub__(self, other): return other + (-self)
    def __rmul__(self, other): return self * other
    def __truediv__(self, other): return self * other ** -1
    def __rtruediv__(self, other): return other * self ** -1

    def __repr__(self):
        return f"Value(data={self.data}, grad={self.grad})"

    def backward(self):
        """Accumulate d(self)/d(node) into every node's .grad."""
        self.grad = 1
        for node in reversed(topological_order(self)):
            for child, local_grad in zip(node._children, node._local_grads):
                child.grad += local_grad * node.grad


def topological_order(root):
    """Children before parents: the post-order of a depth-first walk that visits children in order.

    The same order as microgpt's recursive `build_topo`, with an explicit stack so deep graphs
    (many layers, wide embeddings) cannot exhaust Python's recursion limit.
    """
    order = []
    visited = {root}
    stack = [(root, iter(root._children))]
    while stack:
        node, children = stack[-1]
        for child in children:
            if child not in visited:
                visited.add(child)
                stack.append((child, iter(child._children)))
                break
        else:
            stack.pop()
            order.append(node)
    return order


@contextmanager
def without_cycle_collector():
    """Pause Python's cyclic garbage collector while a graph is built and walked.

    A graph of Values has no reference cycles (a node points only to older nodes), so reference
    counting frees it; the cyclic collector would only rescan the hundreds of thousands of live nodes
    of a training step again and again, which halves the reference engine's speed.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()

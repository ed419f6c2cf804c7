"""The scalar autograd `Value`: every operation against central finite differences, gradient accumulation,
deep graphs without recursion, the topological order of Karpathy's recursive `build_topo`; and the model's
hand-derived gradients (reference, numpy and fused engines) against PyTorch autograd in float64."""

import math
import random
import sys

import pytest

from microgpt.engines.reference.autograd import Value, topological_order
from microgpt.config import ModelConfig, init_parameters
from microgpt.engines import make_engine
from microgpt.engines.reference.gpt import batch_loss

from helpers import assert_named_arrays_close, random_batch, switches_id

FD_STEP = 1e-6
FD_RTOL = 1e-6  # central differences: truncation ~h^2, rounding ~1e-16/h = 1e-10, both far below this


def finite_difference_grads(f, point):
    """d f / d x_i by central differences, evaluating f on fresh Values."""
    grads = []
    for i in range(len(point)):
        up = [Value(x + (FD_STEP if j == i else 0.0)) for j, x in enumerate(point)]
        down = [Value(x - (FD_STEP if j == i else 0.0)) for j, x in enumerate(point)]
        grads.append((f(*up).data - f(*down).data) / (2 * FD_STEP))
    return grads


def autograd_grads(f, point):
    xs = [Value(x) for x in point]
    out = f(*xs)
    out.backward()
    return out.data, [x.grad for x in xs]


def relu(x):
    return max(0.0, x)


# (name, expression on Values, the same expression on floats, point); no point sits on a ReLU kink
CASES = [
    ('add', lambda a, b: a + b, lambda a, b: a + b, (0.7, -1.3)),
    ('mul', lambda a, b: a * b, lambda a, b: a * b, (0.7, -1.3)),
    ('sub', lambda a, b: a - b, lambda a, b: a - b, (0.7, -1.3)),
    ('truediv', lambda a, b: a / b, lambda a, b: a / b, (0.7, -1.3)),
    ('neg', lambda a, b: -a * b, lambda a, b: -a * b, (0.7, -1.3)),
    ('pow int', lambda a: a ** 3, lambda a: a ** 3, (-1.1,)),
    ('pow -0.5', lambda a: a ** -0.5, lambda a: a ** -0.5, (1.7,)),
    ('pow 2.5', lambda a, b: (a * b) ** 2.5, lambda a, b: (a * b) ** 2.5, (0.9, 1.3)),
    ('radd', lambda a: 2.5 + a * a, lambda a: 2.5 + a * a, (0.4,)),
    ('rsub', lambda a, b: 2.5 - a * b, lambda a, b: 2.5 - a * b, (0.4, 1.9)),
    ('rmul', lambda a, b: 2.5 * (a + b), lambda a, b: 2.5 * (a + b), (0.4, 1.9)),
    ('rtruediv', lambda a, b: 2.5 / (a * b), lambda a, b: 2.5 / (a * b), (0.4, 1.9)),
    ('log', lambda a, b: (a * b).log(), lambda a, b: math.log(a * b), (0.4, 1.9)),
    ('exp', lambda a, b: (a - b).exp(), lambda a, b: math.exp(a - b), (0.4, 1.9)),
    ('relu positive', lambda a, b: (a * b).relu() * a, lambda a, b: relu(a * b) * a, (0.4, 1.9)),
    ('relu negative', lambda a, b: (a * b).relu() + a, lambda a, b: relu(a * b) + a, (-0.4, 1.9)),
    ('relu2 positive', lambda a, b: (a - b).relu2() * b, lambda a, b: relu(a - b) ** 2 * b, (1.4, 0.3)),
    ('relu2 negative', lambda a, b: (a - b).relu2() + b, lambda a, b: relu(a - b) ** 2 + b, (-1.4, 0.3)),
    ('value + float', lambda a: a + 1.5, lambda a: a + 1.5, (0.3,)),
    ('value * float', lambda a: a * 0.3 * a, lambda a: a * 0.3 * a, (0.3,)),
    ('value - float', lambda a: (a - 0.7) * a, lambda a: (a - 0.7) * a, (0.3,)),
    ('value / float', lambda a: (a / 4.0) * a, lambda a: (a / 4.0) * a, (0.3,)),
    ('softmax-like', lambda a, b, c: a.exp() / (a.exp() + b.exp() + c.exp()),
     lambda a, b, c: math.exp(a) / (math.exp(a) + math.exp(b) + math.exp(c)), (0.3, -0.2, 1.1)),
    ('rmsnorm-like', lambda a, b, c: a * ((a * a + b * b + c * c) / 3 + 1e-5) ** -0.5,
     lambda a, b, c: a * ((a * a + b * b + c * c) / 3 + 1e-5) ** -0.5, (0.3, -0.2, 1.1)),
    ('composite', lambda a, b, c: (((a * b + c).exp() / (a - c) ** 2).log() - 3.0 / b).relu() * (1 - c),
     lambda a, b, c: relu(math.log(math.exp(a * b + c) / (a - c) ** 2) - 3.0 / b) * (1 - c), (0.9, -0.5, 0.2)),
]


@pytest.mark.parametrize('name, f, f_float, point', CASES, ids=[c[0] for c in CASES])
def test_op_matches_float_math_and_finite_differences(name, f, f_float, point):
    value, grads = autograd_grads(f, point)
    want_value = f_float(*point)
    assert value == pytest.approx(want_value, rel=1e-15, abs=1e-15), (name, value, want_value)
    fd = finite_difference_grads(f, point)
    for i, (g, d) in enumerate(zip(grads, fd)):
        assert g == pytest.approx(d, rel=FD_RTOL, abs=FD_RTOL), (name, i, g, d)
    assert any(g != 0 for g in grads), (name, grads)  # the check above is not vacuous


def test_gradient_accumulates_over_every_use_of_a_node():
    x, y = Value(0.6), Value(-1.7)
    f = x * x + x * y + x + x.exp() + y * y * y
    f.backward()
    want_x = 2 * 0.6 + -1.7 + 1 + math.exp(0.6)
    want_y = 0.6 + 3 * (-1.7) ** 2
    assert x.grad == pytest.approx(want_x, rel=1e-14), (x.grad, want_x)
    assert y.grad == pytest.approx(want_y, rel=1e-14), (y.grad, want_y)


def test_shared_intermediate_node_accumulates():
    x = Value(0.5)
    h = x.exp()  # used by three parents
    f = h * h + h / 2.0 + (-h)
    f.backward()
    e = math.exp(0.5)
    assert h.grad == pytest.approx(2 * e + 0.5 - 1, rel=1e-14), (h.grad, 2 * e - 0.5)
    assert x.grad == pytest.approx((2 * e - 0.5) * e, rel=1e-14), (x.grad, (2 * e - 0.5) * e)


def test_backward_on_a_deep_chain_does_not_recurse():
    n = 20_000  # 20 times Python's default recursion limit
    x = Value(1.5)
    y = x
    for _ in range(n):
        y = y + x
    y = y * 2.0
    y.backward()  # microgpt's recursive build_topo raises RecursionError here
    assert y.data == 2 * 1.5 * (n + 1), y.data
    assert x.grad == 2.0 * (n + 1), x.grad
    order = topological_order(y)
    assert len(order) == n + 2, len(order)
    assert order[0] is x and order[-1] is y, (order[0], order[-1])


def recursive_topological_order(root):
    """Karpathy's build_topo, verbatim apart from the function wrapper."""
    topo = []
    visited = set()

    def build_topo(v):
        if v not in visited:
            visited.add(v)
            for child in v._children:
                build_topo(child)
            topo.append(v)
    build_topo(root)
    return topo


def random_dag(rng, n_leaves, n_nodes):
    """A random expression DAG whose nodes are reused many times (sometimes as both operands)."""
    pool = [Value(rng.uniform(-1, 1)) for _ in range(n_leaves)]
    binary = [lambda a, b: a + b, lambda a, b: a * b, lambda a, b: a - b]
    unary = [lambda a: -a, lambda a: a.relu(), lambda a: a.relu2(), lambda a: 0.5 + a, lambda a: 0.5 - a,
             lambda a: 0.9 * a, lambda a: a / 3.0, lambda a: a * 1.1, lambda a: a - 0.25]

    def pick():  # mostly recent nodes, so the graph is deep as well as wide
        if rng.random() < 0.7:
            return pool[-rng.randint(1, min(len(pool), 8))]
        return rng.choice(pool)
    for _ in range(n_nodes):
        r = rng.random()
        if r < 0.1:
            a = pick()
            pool.append(rng.choice(binary)(a, a))
        elif r < 0.6:
            pool.append(rng.choice(binary)(pick(), pick()))
        else:
            pool.append(rng.choice(unary)(pick()))
    return sum(pool[-5:]), pool


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_topological_order_is_microgpts_recursive_post_order(seed):
    root, pool = random_dag(random.Random(seed), n_leaves=20, n_nodes=3000)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        want = recursive_topological_order(root)
    finally:
        sys.setrecursionlimit(limit)
    got = topological_order(root)
    assert len(got) == len(want), (len(got), len(want))
    for i, (g, w) in enumerate(zip(got, want)):
        assert g is w, f"node {i} of {len(want)} differs: {g!r} vs {w!r}"
    assert len(want) > 500, len(want)  # the walk reached a large part of the graph

    # backward over that order, microgpt's way, gives bit-identical gradients
    root.grad = 1
    for v in reversed(want):
        for child, local_grad in zip(v._children, v._local_grads):
            child.grad += local_grad * v.grad
    want_grads = [v.grad for v in pool]
    for v in want:
        v.grad = 0
    root.backward()
    got_grads = [v.grad for v in pool]
    mismatches = [(i, g, w) for i, (g, w) in enumerate(zip(got_grads, want_grads)) if g != w]
    assert not mismatches, mismatches[:5]


# ---- the engines' gradients equal PyTorch autograd (engines/torch/model.py) in float64

@pytest.mark.parametrize('sizes', [
    pytest.param(dict(n_embd=8, n_head=2, n_layer=2, block_size=6), id='2-layer-tiny',  # the quick loop: the
                 marks=pytest.mark.slow(seconds=1)),  # reference engine against numpy's, numpy's against PyTorch
    # the same code at microgpt's size, where the scalar engine takes seconds: the full suite (and test_golden.py)
    pytest.param(dict(n_embd=16, n_head=4, n_layer=1, block_size=16), id='microgpt-default',
                 marks=pytest.mark.slow(seconds=2))])
def test_reference_model_gradients_equal_torch_float64(sizes, require_torch):
    """The one PyTorch model (engines/torch/model.py) by autograd, on a padded batch of four documents."""
    from microgpt.engines.torch.model import loss_and_grads as torch_loss_and_grads
    torch = require_torch
    rng = random.Random(5)
    cfg = ModelConfig(vocab_size=7, init_std=0.3, **sizes).validate()
    bos = cfg.vocab_size - 1
    batch = [[bos] + [rng.randrange(bos) for _ in range(length)] + [bos] for length in (1, 4, 9, 20)]
    floats = init_parameters(cfg, rng)

    state_dict = {name: [[Value(x) for x in row] for row in rows] for name, rows in floats.items()}
    loss = batch_loss(batch, state_dict, cfg)
    loss.backward()

    torch_loss, torch_grads = torch_loss_and_grads(floats, cfg, batch)

    assert loss.data == pytest.approx(torch_loss, rel=1e-12), (loss.data, torch_loss)
    for name, rows in state_dict.items():
        got = torch.tensor([[p.grad for p in row] for row in rows], dtype=torch.float64)
        want = torch.from_numpy(torch_grads[name])
        assert want is not None and want.abs().max() > 0, name
        err = ((got - want).abs() / want.abs().clamp_min(1e-300)).max().item()
        ok = torch.allclose(got, want, rtol=1e-10, atol=0)
        assert ok, f"{name}: max relative error {err:.3g} > 1e-10; got {got.flatten()[:4].tolist()}, " \
                   f"want {want.flatten()[:4].tolist()}"


TORCH_SWITCHES = [
    {},
    {'n_layer': 2, 'n_embd': 8, 'n_head': 2, 'block_size': 5},
    {'n_layer': 3, 'n_embd': 12, 'n_head': 3, 'block_size': 7},
    {'n_embd': 8, 'n_head': 1, 'block_size': 3},
    {'norm': 'esp32', 'bos': 'first', 'init_std': 0.1},
    {'tie_lm_head': True, 'mlp_activation': 'relu2', 'zero_init': ('attn_wo', 'mlp_fc2'), 'init_std': 0.02},
    {'norm': 'none'},
    {'attention': 'self'},
]


@pytest.mark.parametrize('engine_name, switches', [  # the quick loop: the fused engine on microgpt's model only
    pytest.param(name, switches, id=f'{name}-{switches_id(switches)}',
                 marks=pytest.mark.slow(seconds=1) if name == 'fused' and switches else ())
    for name in ('numpy', 'fused') for switches in TORCH_SWITCHES])
def test_fast_engine_gradients_equal_torch_autograd(engine_name, switches, require_torch):
    """The hand-derived backward passes against autograd on a padded batch of three documents."""
    from microgpt.engines.torch.model import loss_and_grads as torch_loss_and_grads
    cfg = ModelConfig(vocab_size=11, **switches).validate()
    engine = make_engine(engine_name, cfg, random.Random(1))
    batch = random_batch(random.Random(7), cfg, 3, max_len=cfg.block_size + 3)
    loss = engine.loss_and_grads(batch)
    want_loss, want = torch_loss_and_grads(engine.weights(), cfg, batch)
    assert abs(loss - want_loss) <= 1e-12 * want_loss, (loss, want_loss)
    assert_named_arrays_close(engine.gradients(), want, rtol=1e-10, atol=1e-13, what='gradient')

"""The fused engine's pieces: its plan (parameter rows from the parameter table, the workspace's buffers, the
packed batch) and its forward-only loss."""

import random

import numpy as np
import pytest

from microgpt.config import ModelConfig, TrainConfig, parameter_table
from microgpt.engines import make_engine
from microgpt.engines.fused import plan as fused_plan


def random_batch(rng, cfg, batch_size, max_len):
    """Documents of random length (some longer than the block), wrapped in BOS."""
    chars = [i for i in range(cfg.vocab_size) if i != cfg.bos_id]
    return [[cfg.bos_id] + [rng.choice(chars) for _ in range(rng.randrange(0, max_len))] + [cfg.bos_id]
            for _ in range(batch_size)]


@pytest.mark.parametrize('switches', [{}, {'n_layer': 3, 'n_embd': 8, 'n_head': 2, 'tie_lm_head': True}])
def test_plan_reads_parameter_rows_from_the_parameter_table(switches):
    cfg = ModelConfig(vocab_size=11, **switches)
    plan, rows = fused_plan.build_plan(cfg, capacity=16)
    table = {p.name: p for p in parameter_table(cfg)}
    C = cfg.n_embd
    want = {fused_plan.SLOT_WTE: table['wte'].offset // C, fused_plan.SLOT_WPE: table['wpe'].offset // C,
            fused_plan.SLOT_LM_HEAD: table['wte' if cfg.tie_lm_head else 'lm_head'].offset // C}
    for i in range(cfg.n_layer):
        for m, kind in enumerate(fused_plan.LAYER_MATRICES):
            want[fused_plan.LAYERS_AT + 4 * i + m] = table[f'layer{i}.{kind}'].offset // C
    got = {slot: int(plan[slot]) for slot in want}
    assert got == want, (got, want)
    buffer_rows = fused_plan.buffer_rows(cfg)
    assert tuple(buffer_rows) == fused_plan.BUFFERS, (tuple(buffer_rows), fused_plan.BUFFERS)
    starts = list(plan[fused_plan.BUFFERS_AT:fused_plan.BUFFERS_AT + len(fused_plan.BUFFERS)])
    assert starts == list(np.cumsum([0, *buffer_rows.values()])[:-1]) and rows == sum(buffer_rows.values()), starts


def test_pack_columns_writes_each_predicted_position():
    """Two documents of one group, the second longer than the block: input, target, position, first key and
    dropout row per column, then padding columns that attend to themselves."""
    from microgpt.engines.fused.plan import columns_of, pack_columns
    cfg = ModelConfig(vocab_size=6, block_size=3)
    plan, _ = fused_plan.build_plan(cfg, capacity=8)
    docs, doc_starts = fused_plan.pack_documents([[5, 1, 5], [5, 2, 3, 4, 1, 5], [5, 3, 5]], cfg.block_size + 1)
    assert docs.tolist() == [5, 1, 5, 5, 2, 3, 4, 5, 3, 5] and doc_starts.tolist() == [0, 3, 7, 10], (docs, doc_starts)
    n = pack_columns(plan, docs, doc_starts, 0, 0, 2)
    assert n == 5, n
    got = columns_of(plan).tolist()
    want = [[5, 1, 5, 2, 3, 0, 0, 0],    # input token
            [1, 5, 2, 3, 4, 0, 0, 0],    # target
            [0, 1, 0, 1, 2, 0, 0, 0],    # position
            [0, 0, 2, 2, 2, 5, 6, 7],    # first column attended to (the padding: itself)
            [0, 1, 3, 4, 5, 0, 0, 0]]    # dropout row: document * block_size + position
    assert got == want, got


@pytest.mark.parametrize('dtype', ['float64', 'float32'])
@pytest.mark.parametrize('batch_size', [1, 5])
def test_loss_is_forward_only_and_equals_loss_and_grads(batch_size, dtype):
    """loss() runs the forward alone: the loss of loss_and_grads, bit for bit, with the gradients untouched."""
    cfg = ModelConfig(vocab_size=9, n_layer=2, block_size=6)
    engine = make_engine('fused', cfg, random.Random(1), dtype)
    rng = random.Random(2)
    engine.train_steps(random_batch(rng, cfg, 8, max_len=8), 0, 4, TrainConfig(steps=4, batch_size=2, dropout=0.3))
    for _ in range(2):
        batch = random_batch(rng, cfg, batch_size, max_len=9)
        gradients = engine.grad_flat.copy()
        got = engine.loss(batch)
        np.testing.assert_array_equal(engine.grad_flat, gradients)
        want = engine.loss_and_grads(batch)
        assert got == want, (got, want)
        assert not np.array_equal(engine.grad_flat, gradients)


def test_loss_equals_the_numpy_engines_and_checks_its_batch():
    cfg = ModelConfig(vocab_size=7, n_embd=8, n_head=2)
    engine, numpy_engine = make_engine('fused', cfg, random.Random(3)), make_engine('numpy', cfg, random.Random(3))
    batch = random_batch(random.Random(4), cfg, 6, max_len=20)
    for documents in (batch[:1], batch):
        got, want = engine.loss(documents), numpy_engine.loss(documents)
        assert abs(got - want) <= 1e-12 * want, (got, want)
    for bad in ([[6, 1, 7, 6]], [[6, 1, 6], [6, -1, 6]]):
        with pytest.raises(ValueError, match='outside the vocabulary'):
            engine.loss(bad)
    for nothing in ([[6]], [[6], [6]]):
        with pytest.raises(ValueError, match='no token to predict'):
            engine.loss(nothing)

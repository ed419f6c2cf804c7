"""Training on the token array (documents.Documents, what `microgpt train` now reads) gives the very numbers of
training on lists of token lists, for every engine, batch size and BOS position."""

import random

import numpy as np
import pytest
from helpers import write_names

from microgpt.config import ModelConfig, TrainConfig
from microgpt.corpus import load_corpus
from microgpt.data import Vocabulary, load_documents, shuffled
from microgpt.documents import Documents
from microgpt.engines import make_engine
from microgpt.train.loop import evaluate, train


@pytest.mark.parametrize('engine_name', ['numpy', 'fused'])
@pytest.mark.parametrize('batch_size, bos', [(1, 'last'), (3, 'last'), (4, 'first')])
def test_documents_train_as_lists_do(tmp_path, engine_name, batch_size, bos):
    path = write_names(tmp_path / 'names.txt')
    strings = shuffled(load_documents(path), random.Random(3))
    vocab = Vocabulary.from_documents(strings, bos_first=bos == 'first')
    lists = [vocab.document_tokens(s) for s in strings]
    documents = Documents(load_corpus(path), bos_first=bos == 'first').shuffled(random.Random(3))
    assert [documents[i] for i in range(len(documents))] == lists
    cfg = ModelConfig(vocab_size=vocab.size, bos=bos)
    tcfg = TrainConfig(steps=70, batch_size=batch_size, seed=5)
    runs = []
    for docs in (lists, documents):
        engine = make_engine(engine_name, cfg, random.Random(5))
        reports = list(train(engine, docs, tcfg))
        runs.append(([(r.loss, r.tokens) for r in reports], engine.state().weights, evaluate(engine, docs[:20])))
    (losses_a, weights_a, eval_a), (losses_b, weights_b, eval_b) = runs
    assert losses_a == losses_b, (losses_a[:3], losses_b[:3])
    for name in weights_a:
        np.testing.assert_array_equal(weights_a[name], weights_b[name], err_msg=name)
    assert eval_a == eval_b, (eval_a, eval_b)

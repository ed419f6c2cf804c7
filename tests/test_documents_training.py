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


@pytest.mark.parametrize('chunk', [1, 3, 2**20])
def test_found_tells_which_strings_are_documents(tmp_path, monkeypatch, chunk):
    """Documents.found (sample's novelty check) against the strings, for every length, prefixes and extensions of
    documents, characters outside the file, the empty string, in the file's order and in a shuffled subset, its
    documents compared `chunk` characters at a time."""
    import microgpt.documents as documents_module
    monkeypatch.setattr(documents_module, 'CHUNK', chunk)
    rng = random.Random(7)
    lines = [''.join(rng.choice('abc') for _ in range(rng.randint(1, 6))) for _ in range(300)]
    path = tmp_path / 'words.txt'
    path.write_text('\n'.join(lines) + '\n')
    everything = Documents(load_corpus(path))
    subset = everything.shuffled(random.Random(1)).take(range(0, len(everything), 3))
    probes = ({''.join(rng.choice('abc') for _ in range(n)) for n in range(8) for _ in range(30)}
              | {line[:-1] for line in lines} | {line + 'a' for line in lines} | {'abz', 'é', ''})
    for docs in (everything, subset):
        strings = set(docs.texts())
        assert docs.found(probes) == probes & strings
        assert docs.found(list(strings)[:5] * 2) == set(list(strings)[:5])


def test_eval_and_sample_read_the_data_as_a_token_array(tmp_path, monkeypatch):
    """`microgpt eval` and `sample` (its novelty check) read the run's data, or --data, through the token cache with
    no string per document (on a 48 MB word list: 1.5 s and 225 MiB where they took 7 s and 655 MiB): the same
    losses as the strings give, a --data file with fewer characters remapped to the model's ids, and the same marks."""
    from helpers import run_cli_in_process as run
    import microgpt.commands
    import microgpt.data
    import microgpt.model_commands
    import microgpt.train.recorded
    from microgpt.model_commands import _engine_from_checkpoint
    path = write_names(tmp_path / 'names.txt')
    out = tmp_path / 'run'
    assert run('train', '--data', path, '--steps', 30, '--eval-every', 10, '--out', out, '--num-samples', 0)[0] == 0
    checkpoint = str(out / 'model.safetensors')
    ckpt, engine = _engine_from_checkpoint(checkpoint)
    from microgpt.train.recorded import recorded_split, trained_documents
    held_out = recorded_split(ckpt, load_documents(path))[1]
    fewer = tmp_path / 'fewer.txt'  # fewer characters than the model's: its ids differ from the file's own
    fewer.write_text('ab\nba\nzz\n')
    expected = {'': evaluate(engine, [ckpt.vocab.document_tokens(d) for d in held_out]),
                str(fewer): evaluate(engine, [ckpt.vocab.document_tokens(d) for d in ['ab', 'ba', 'zz']])}
    trained = set(trained_documents(ckpt))
    for module in (microgpt.data, microgpt.commands, microgpt.model_commands, microgpt.train.recorded):
        monkeypatch.setattr(module, 'load_documents', None, raising=False)  # a list of strings would fail now
    for data, loss in expected.items():
        code, stdout, err = run('eval', '--checkpoint', checkpoint, *(['--data', data] if data else []))
        assert code == 0 and stdout.startswith(f"loss {loss:.4f} nats per character on "), (stdout, err)
    many = tmp_path / 'many.txt'  # characters the model lacks: the first 20 named, not thousands
    many.write_text(''.join(chr(0x4e00 + i) for i in range(300)) + '\n')
    code, _, err = run('eval', '--checkpoint', checkpoint, '--data', many)
    assert code == 2 and "'\u4e00', '\u4e01'" in err and ", '\u4e13' and 280 more, not in" in err, err
    one = tmp_path / 'one.txt'
    one.write_text('ab\n')
    assert f"on 1 document ({one})" in run('eval', '--checkpoint', checkpoint, '--data', one)[1]  # not "1 documents"
    code, stdout, err = run('sample', '--checkpoint', checkpoint, '--num-samples', 40, '--temperature', 0.5)
    samples = [line.split(': ')[1] for line in stdout.splitlines() if line.startswith('sample')]
    marked = {name.removesuffix(' *') for name in samples if name.endswith(' *')}
    assert code == 0 and marked == {name.removesuffix(' *') for name in samples} & trained and marked, stdout

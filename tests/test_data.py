"""Documents and the character tokenizer: line endings, blank lines, whitespace, byte-order marks,
non-ASCII text, the vocabulary, and the bundled dataset."""

import io
import os
import string

import pytest

from microgpt.data import Vocabulary, bundled_dataset_path, load_documents, split_documents
from microgpt.errors import MicrogptError


def write_bytes(tmp_path, raw, name='docs.txt'):
    path = tmp_path / name
    path.write_bytes(raw)
    return str(path)


def microgpt_reads(text):
    """What microgpt's `[line.strip() for line in open('input.txt') if line.strip()]` gives (text mode)."""
    return [line.strip() for line in io.StringIO(text, newline=None) if line.strip()]


@pytest.mark.parametrize('raw, want', [
    (b'anna\nbob\ncy\n', ['anna', 'bob', 'cy']),
    (b'anna\r\nbob\r\ncy\r\n', ['anna', 'bob', 'cy']),
    (b'anna\rbob\rcy', ['anna', 'bob', 'cy']),
    (b'anna\r\nbob\rcy\ndee', ['anna', 'bob', 'cy', 'dee']),
    (b'anna\nbob', ['anna', 'bob']),
    (b'\n\nanna\n\n  \n\t\nbob\n \t \n', ['anna', 'bob']),
    (b'  anna  \n\tbob\t\n mary ann \n', ['anna', 'bob', 'mary ann']),
    (b'\r\n\r\nanna\r\n\r\n', ['anna']),
    (b'\r\r\ranna\r\r', ['anna']),
], ids=['lf', 'crlf', 'lone-cr', 'mixed', 'no-final-newline', 'blank-lines', 'outer-spaces',
        'blank-crlf', 'blank-cr'])
def test_line_endings_and_whitespace(tmp_path, raw, want):
    got = load_documents(write_bytes(tmp_path, raw))
    assert got == want, (raw, got, want)
    assert split_documents(raw.decode('utf-8')) == want, (raw, split_documents(raw.decode('utf-8')))
    reads = microgpt_reads(raw.decode('utf-8'))
    assert got == reads, ('differs from microgpt text-mode reading', raw, got, reads)


def test_utf8_byte_order_mark_is_dropped(tmp_path):
    got = load_documents(write_bytes(tmp_path, '\ufeffanna\nbob\n'.encode('utf-8')))
    assert got == ['anna', 'bob'], got
    assert '\ufeff' not in ''.join(got), got
    assert split_documents('\ufeff\ufeff\n') == ['\ufeff'], split_documents('\ufeff\ufeff\n')  # only one BOM is an artefact


def test_byte_order_mark_only_is_an_empty_file(tmp_path):
    path = write_bytes(tmp_path, '\ufeff\n\n'.encode('utf-8'))
    with pytest.raises(MicrogptError, match='no non-blank lines') as e:
        load_documents(path)
    assert path in str(e.value), str(e.value)


def test_non_ascii_characters(tmp_path):
    text = 'zoë\njean-luc\nsnake_case\n東京\nÅsa\n'
    got = load_documents(write_bytes(tmp_path, text.encode('utf-8')))
    assert got == ['zoë', 'jean-luc', 'snake_case', '東京', 'Åsa'], got
    vocab = Vocabulary.from_documents(got)
    assert vocab.chars == ''.join(sorted(set(''.join(got)))), vocab.chars
    for ch in 'ë-_東京Å':
        assert ch in vocab.chars, (ch, vocab.chars)
    for doc in got:
        assert vocab.decode(vocab.encode(doc)) == doc, (doc, vocab.encode(doc))


def test_unicode_whitespace_is_stripped_like_python_text_mode():
    text = '\u00a0anna\u3000\nbob\x0c\n\u2028\n'
    assert split_documents(text) == microgpt_reads(text) == ['anna', 'bob'], split_documents(text)


def test_vocabulary_is_the_sorted_set_of_characters_with_bos_last():
    docs = ['emma', 'olivia', 'ava', 'Zoë', 'a b']
    vocab = Vocabulary.from_documents(docs)
    chars = sorted(set(''.join(docs)))
    assert vocab.chars == ''.join(chars), (vocab.chars, chars)
    assert list(vocab.chars) == sorted(vocab.chars), vocab.chars
    assert vocab.size == len(chars) + 1, (vocab.size, len(chars))
    assert vocab.bos_id == len(chars), (vocab.bos_id, len(chars))
    assert vocab.encode('a') == [chars.index('a')], vocab.encode('a')
    assert vocab.document_tokens('ava') == [len(chars)] + [chars.index(c) for c in 'ava'] + [len(chars)], \
        vocab.document_tokens('ava')


def test_vocabulary_with_bos_first():
    docs = ['emma', 'olivia', 'ava']
    vocab = Vocabulary.from_documents(docs, bos_first=True)
    chars = sorted(set(''.join(docs)))
    assert vocab.bos_id == 0, vocab.bos_id
    assert vocab.size == len(chars) + 1, vocab.size
    ids = vocab.encode('olivia')
    assert ids == [chars.index(c) + 1 for c in 'olivia'], ids
    assert 0 not in ids, ids
    assert vocab.decode(ids) == 'olivia', vocab.decode(ids)
    assert vocab.document_tokens('ava')[0] == vocab.document_tokens('ava')[-1] == 0, vocab.document_tokens('ava')


@pytest.mark.parametrize('bos_first', [False, True])
def test_encode_decode_round_trip(bos_first):
    docs = ['hello world', 'ÆØÅ', 'a-b_c', '中文字']
    vocab = Vocabulary.from_documents(docs, bos_first=bos_first)
    every_id = [i for i in range(vocab.size) if i != vocab.bos_id]
    assert vocab.encode(vocab.decode(every_id)) == every_id, every_id
    for doc in docs:
        ids = vocab.encode(doc)
        assert all(0 <= i < vocab.size and i != vocab.bos_id for i in ids), (doc, ids)
        assert vocab.decode(ids) == doc, (doc, ids, vocab.decode(ids))


def test_encoding_an_unknown_character_names_it():
    vocab = Vocabulary.from_documents(['abc'])
    with pytest.raises(MicrogptError) as e:
        vocab.encode('abz')
    assert "'z'" in str(e.value), str(e.value)
    with pytest.raises(MicrogptError) as e:
        vocab.encode('é')
    assert "'é'" in str(e.value), str(e.value)


def test_bundled_dataset_loads():
    path = bundled_dataset_path()
    assert os.path.isfile(path), f"{path} is missing: the package ships it (package-data datasets/*.txt)"
    docs = load_documents(path)
    assert len(docs) > 0, path
    chars = set(''.join(docs))
    assert chars and chars <= set(string.ascii_lowercase), sorted(chars - set(string.ascii_lowercase))


def test_decode_skips_bos_wherever_it_is():
    from microgpt.data import Vocabulary
    assert Vocabulary.from_documents(['abc'], bos_first=True).decode([0, 1, 3, 0]) == 'ac'
    assert Vocabulary.from_documents(['abc']).decode([3, 0, 2, 3]) == 'ac'

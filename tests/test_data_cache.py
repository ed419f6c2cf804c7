"""The token cache (corpus.py) and Documents (documents.py): a data file tokenised piece by piece gives exactly
the documents and token ids of data.load_documents and Vocabulary.document_tokens, whatever the pieces' size;
shuffling and every held-out split give the same documents in the same order; a cache is reused only while
its source is unchanged and the file is whole and of this version; interruptions and unwritable or full
cache folders leave nothing half-written behind."""

import errno
import gzip
import io
import json
import os
import random
import re
import stat
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import assert_one_line_error, in_ci, quick_loop, run_cli_in_process
from microgpt import corpus as corpus_module
from microgpt import data
from microgpt import string_order as string_order_module
from microgpt.corpus import load_corpus
from microgpt.data import TEXT_HINT, Vocabulary, holdout_split, load_documents, shuffled
from microgpt.documents import Documents
from microgpt.errors import MicrogptError, NotData

# line breaks, ASCII and Unicode whitespace (stripped, but not line ends), a byte-order mark, multi-byte text
ALPHABET = ['a', 'b', 'z', ' ', '\t', '\n', '\r', '\r\n', '\x0b', '\x0c', '\x1c', '\x85', '\u00a0', '\u2028',
            '\u3000', '\ufeff', 'é', 'ß', '東', '🙂', '-', '_']


def want_tokens(path, bos_first=False):
    docs = load_documents(path)
    vocab = Vocabulary.from_documents(docs, bos_first)
    return docs, vocab, [vocab.document_tokens(d) for d in docs]


def assert_same(corpus, path, bos_first=False):
    docs, vocab, tokens = want_tokens(path, bos_first)
    got = Documents(corpus, bos_first=bos_first)
    assert got.vocabulary() == vocab, (got.vocabulary(), vocab)
    assert len(got) == len(docs), (len(got), len(docs))
    assert got[:] == tokens, next((i, got[i], tokens[i]) for i in range(len(docs)) if got[i] != tokens[i])
    assert corpus.longest == max(map(len, docs)), (corpus.longest, max(map(len, docs)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=60), piece=st.integers(1, 9),
       cached=st.booleans(), bos_first=st.booleans())
def test_tokenised_pieces_are_the_documents_of_load_documents(tmp_path_factory, monkeypatch, parts, piece, cached,
                                                                bos_first):
    text = ''.join(parts)
    folder = tmp_path_factory.mktemp('text')
    path = str(folder / 'docs.txt')
    with open(path, 'wb') as f:
        f.write(text.encode('utf-8'))
    monkeypatch.setattr(data, 'READ_BYTES', piece)  # pieces end on line breaks wherever the reads end (set anew each example)
    try:
        docs = load_documents(path)
    except MicrogptError as e:
        with pytest.raises(MicrogptError) as info:
            load_corpus(path, cache_dir=str(folder / 'cache'), min_cache_bytes=0)
        assert str(info.value) == str(e), (str(info.value), str(e))
        return
    assert docs == data.split_documents(text), (docs, text)
    corpus = load_corpus(path, cache_dir=str(folder / 'cache'), min_cache_bytes=0 if cached else 2**40)
    assert (corpus.cache_path is not None) == cached, corpus.cache_path
    assert_same(corpus, path, bos_first)


def write_words(path, n, alphabet='abcdefghijklmnopqrstuvwxyz', seed=0):
    rng = random.Random(seed)
    lines = [''.join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(n)]
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return str(path)


def test_more_than_255_characters_widen_the_cached_ids_to_uint16(tmp_path, monkeypatch):
    """The first pieces fit uint8; a later one brings the 256th character and the file is widened in place."""
    monkeypatch.setattr(data, 'READ_BYTES', 4096)
    plain = write_words(tmp_path / 'plain.txt', 3000)
    wide_alphabet = ''.join(chr(c) for c in range(0x100, 0x100 + 300))
    with open(plain, 'a', encoding='utf-8') as f:
        f.write(open(write_words(tmp_path / 'wide.txt', 200, wide_alphabet), encoding='utf-8').read())
    corpus = load_corpus(plain, cache_dir=str(tmp_path / 'cache'), min_cache_bytes=0)
    assert corpus.tokens.dtype == np.uint16 and len(corpus.chars) > 255, (corpus.tokens.dtype, len(corpus.chars))
    assert_same(corpus, plain)
    assert_same(load_corpus(plain, min_cache_bytes=2**40), plain)


def test_ascii_pieces_after_the_256th_character_keep_their_wide_ids(tmp_path, monkeypatch):
    """ASCII pieces are mapped a byte at a time (bytes.translate) only while every id fits a byte: once 300 other
    characters have ids, the ASCII pieces after them go through the wide ids, cached and in memory."""
    monkeypatch.setattr(data, 'READ_BYTES', 4096)
    wide = write_words(tmp_path / 'wide.txt', 200, ''.join(chr(c) for c in range(0x100, 0x100 + 300)))
    with open(wide, 'a', encoding='utf-8') as f:
        f.write(open(write_words(tmp_path / 'plain.txt', 3000, 'abcdefghijklmnopqrstuvwxyzABC'),
                     encoding='utf-8').read())
    corpus = load_corpus(wide, cache_dir=str(tmp_path / 'cache'), min_cache_bytes=0)
    assert corpus.tokens.dtype == np.uint16 and len(corpus.chars) > 255, (corpus.tokens.dtype, len(corpus.chars))
    assert_same(corpus, wide)
    assert_same(load_corpus(wide, min_cache_bytes=2**40), wide)


@pytest.fixture
def cached_file(tmp_path):
    return write_words(tmp_path / 'words.txt', 5000), str(tmp_path / 'cache')


def test_a_temporary_left_by_a_killed_run_goes_when_a_cache_is_read(cached_file):
    """SIGTERM, SIGHUP or kill -9 while tokenising left a temporary of hundreds of MB that only a later
    tokenising swept; runs reading a current cache kept it. A live process's temporary stays, and one written in
    the last 10 minutes (in a folder shared between machines, its process id may be another machine's)."""
    path, cache = cached_file
    load_corpus(path, cache_dir=cache, min_cache_bytes=0)
    child = subprocess.Popen(['true'])  # a process id that has ended
    child.wait()
    left, recent = (os.path.join(cache, f'.tmp-tokens-{child.pid}-{name}.bin') for name in ('x', 'z'))
    live = os.path.join(cache, f'.tmp-tokens-{os.getppid()}-y.bin')
    for name in (left, live, recent):
        open(name, 'wb').close()
    os.utime(left, (time.time() - 601, time.time() - 601))
    load_corpus(path, cache_dir=cache, min_cache_bytes=0)
    assert not os.path.exists(left) and os.path.exists(live) and os.path.exists(recent)


def test_a_current_cache_is_memory_mapped_and_not_tokenised_again(cached_file, monkeypatch):
    path, cache = cached_file
    first = load_corpus(path, cache_dir=cache, min_cache_bytes=0)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith('tokens-'), files

    def refuse(*args):
        raise AssertionError("tokenised again although the cache is current")
    monkeypatch.setattr(corpus_module, 'tokenise', refuse)
    again = load_corpus(path, cache_dir=cache, min_cache_bytes=0)
    for array in (again.tokens, again.bounds):  # read-only views of the file's mapping, not copies
        assert isinstance(array.base, np.memmap) and not array.flags.writeable, (type(array.base), array.flags)
    assert again.cache_path == first.cache_path and again.chars == first.chars
    np.testing.assert_array_equal(again.tokens, first.tokens)
    assert_same(again, path)


def rewrite(path, text):
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)


@pytest.mark.parametrize('change', ['same-size-new-text', 'appended', 'same-mtime', 'replaced-file'])
def test_a_changed_source_is_tokenised_again(cached_file, change):
    path, cache = cached_file
    load_corpus(path, cache_dir=cache, min_cache_bytes=0)
    text = open(path, encoding='utf-8').read()
    stat = os.stat(path)
    if change == 'same-size-new-text':
        rewrite(path, text.replace('a', 'q'))
    elif change == 'appended':
        rewrite(path, text + 'zzzzzz\n')
    elif change == 'same-mtime':  # the content changes and the modification time is set back
        rewrite(path, 'Q' + text[1:])
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    else:
        os.replace(write_words(Path(path).parent / 'other.txt', 5000, seed=1), path)
    assert_same(load_corpus(path, cache_dir=cache, min_cache_bytes=0), path)
    assert len(os.listdir(cache)) == 1, os.listdir(cache)  # the entry of this path is replaced, not added to


def with_footer(raw, change):
    """The cache file's bytes `raw` with its JSON footer changed by `change` (a dict in, any JSON value out) and its
    length rewritten to match: a footer that still parses."""
    trailer = len(corpus_module.MAGIC) + 8
    footer_bytes = int.from_bytes(raw[-trailer:-trailer + 8], 'little')
    footer = json.loads(raw[-trailer - footer_bytes:-trailer])
    new = json.dumps(change(footer)).encode()
    return raw[:-trailer - footer_bytes] + new + len(new).to_bytes(8, 'little') + corpus_module.MAGIC


FOOTER_CHANGES = {'longest-text': lambda f: f | {'longest': 'x'}, 'longest-null': lambda f: f | {'longest': None},
                  'chars-repeated': lambda f: f | {'chars': f['chars'][0] + f['chars'][1:-1] + f['chars'][0]},
                  'chars-a-number': lambda f: f | {'chars': 7}, 'a-list': lambda f: [f]}


@pytest.mark.parametrize('damage', ['truncated', 'empty', 'garbage-tail', 'other-version', 'footer-lies',
                                    *FOOTER_CHANGES])
def test_a_damaged_or_foreign_cache_is_rebuilt(cached_file, monkeypatch, damage):
    path, cache = cached_file
    corpus = load_corpus(path, cache_dir=cache, min_cache_bytes=0)
    cache_path = corpus.cache_path
    raw = open(cache_path, 'rb').read()
    del corpus
    if damage == 'truncated':
        open(cache_path, 'wb').write(raw[:len(raw) // 2])
    elif damage == 'empty':
        open(cache_path, 'wb').write(b'')
    elif damage == 'garbage-tail':
        open(cache_path, 'wb').write(raw + b'garbage')
    elif damage == 'other-version':
        monkeypatch.setattr(corpus_module, 'CACHE_VERSION', corpus_module.CACHE_VERSION + 1)
    elif damage == 'footer-lies':  # a footer that claims another token count
        open(cache_path, 'wb').write(raw.replace(b'"n_tokens": ', b'"n_tokens": 1'))
    else:  # a footer that parses and checks in length, holding values of the wrong kind (found by a hostile user)
        open(cache_path, 'wb').write(with_footer(raw, FOOTER_CHANGES[damage]))
    rebuilt = load_corpus(path, cache_dir=cache, min_cache_bytes=0)
    assert_same(rebuilt, path)
    assert corpus_module.open_cache(cache_path, rebuilt.source) is not None, 'the rebuilt cache does not open'


def damage_inside(corpus, damage, d=2000):
    """Write `damage` into document d of the corpus's cache file, leaving the ends its opening checks whole."""
    bounds, bos, itemsize = corpus.bounds, len(corpus.chars), corpus.tokens.itemsize
    bounds_at = bounds.base.offset  # where the bounds start in the file (a view of its memmap)
    if damage.startswith('bound') or damage == 'pair-past-the-end':
        at = bounds_at + d * bounds.itemsize
        data = {'bounds-zeroed': bytes(bounds.itemsize * 50),
                'bound-past-the-end': (2**31).to_bytes(bounds.itemsize, 'little'),
                'pair-past-the-end': b''.join(n.to_bytes(bounds.itemsize, 'little') for n in (2**31, 2**31 + 5))}[damage]
    else:
        position, value = {'token-past-the-vocabulary': (bounds[d] + 1, bos + 5), 'character-for-bos': (bounds[d], 0),
                           'bos-for-character': (bounds[d] + 1, bos)}[damage]
        at, data = int(position) * itemsize, int(value).to_bytes(itemsize, 'little')
    with open(corpus.cache_path, 'r+b') as f:
        f.seek(at)
        f.write(data)


@pytest.mark.parametrize('damage', ['token-past-the-vocabulary', 'character-for-bos', 'bos-for-character',
                                    'bounds-zeroed', 'bound-past-the-end', 'pair-past-the-end'])
def test_a_cache_damaged_inside_stops_in_one_line_and_is_tokenised_again_next(cached_file, damage):
    """Its ends are checked when it opens, its middle as documents are read: a damaged token gave an IndexError
    traceback (numpy engine) or the fused engine's ValueError, and zeroed bounds trained on garbage. Each way of
    reading documents stops with one line and removes the cache; the next load tokenises the file again."""
    from microgpt.documents import Documents
    path, cache = cached_file
    readers = {'one': lambda docs: docs[2000], 'a slice': lambda docs: docs[1999:2001],
               'packed': lambda docs: docs.pack(1997, 5, 17),
               'shuffled, all packed': lambda docs: docs.shuffled(random.Random(0)).pack(0, len(docs), 17),
               'packed, not last': lambda docs: docs.take([2000, 0]).pack(0, 2, 17),
               'split by name, then read': lambda docs: [part[:] for part in docs.holdout(None, 42, 'name')],
               'split by name, nothing read': lambda docs: docs.holdout(None, 42, 'name'),
               'as strings': lambda docs: docs.texts()}
    for name, read in readers.items():
        corpus = load_corpus(path, cache_dir=cache, min_cache_bytes=0)
        damage_inside(corpus, damage)
        docs = Documents(load_corpus(path, cache_dir=cache, min_cache_bytes=0))
        assert docs.corpus.cache_path == corpus.cache_path, name  # the damaged cache opens: its ends are whole
        with pytest.raises(MicrogptError) as info:
            read(docs)
        assert re.fullmatch(rf'{re.escape(corpus.cache_path)}: the token cache is damaged \(.+\); it was removed: '
                            rf'run again to tokenise the data anew', str(info.value)), (name, info.value)
        assert not os.path.exists(corpus.cache_path), name
    assert_same(load_corpus(path, cache_dir=cache, min_cache_bytes=0), path)


@pytest.mark.slow(seconds=3)
def test_a_damaged_cache_read_in_a_models_ids_is_named_and_another_runs_cache_is_kept(tmp_path, monkeypatch):
    """`eval --data` remaps a file of fewer characters to the model's ids: the damage is still named with its cache
    (it said 'the tokenised data is damaged'), and the cache removed. A run that finds damage in a cache another
    run has already replaced leaves the new one."""
    from microgpt.documents import file_documents
    monkeypatch.setenv('MICROGPT_CACHE', str(tmp_path / 'cache'))
    path = write_words(tmp_path / 'words.txt', 150_000)  # 1 MiB and more: cached
    corpus = load_corpus(path)
    assert corpus.cache_path is not None and os.path.getsize(path) >= 2**20
    damage_inside(corpus, 'token-past-the-vocabulary')
    wider = Vocabulary(''.join(sorted(set(corpus.chars) | set('0123'))))
    docs = file_documents(path, wider)
    assert docs.corpus.chars == wider.chars and docs.corpus.cache_path == corpus.cache_path
    with pytest.raises(MicrogptError, match=rf'^{re.escape(corpus.cache_path)}: the token cache is damaged'):
        docs[2000]
    assert not os.path.exists(corpus.cache_path)
    stale = Documents(load_corpus(path))  # a run that opened the cache before another damaged it
    damage_inside(stale.corpus, 'token-past-the-vocabulary')
    os.remove(stale.corpus.cache_path)
    fresh = load_corpus(path)  # another run tokenises the file again, into a new file at the same path
    with pytest.raises(MicrogptError, match='the token cache is damaged'):
        stale[2000]
    assert os.path.exists(fresh.cache_path) and os.stat(fresh.cache_path).st_ino == fresh.cache_inode
    assert_same(fresh, path)


@pytest.mark.parametrize('inside', [False, True], ids=['the-folder-a-file', 'inside-a-file'])
def test_an_unwritable_cache_folder_tokenises_in_memory_with_a_notice(cached_file, tmp_path, inside):
    """MICROGPT_CACHE naming a file said only 'File exists' (and inside one, 'Not a directory'): the file is named."""
    path, _ = cached_file
    blocker = tmp_path / 'a-file'
    blocker.write_text('not a folder')
    folder = blocker / 'cache' if inside else blocker
    corpus = load_corpus(path, cache_dir=str(folder), min_cache_bytes=0)
    assert corpus.cache_path is None and corpus.notice and '\n' not in corpus.notice, corpus.notice
    assert f"cannot write the token cache in {folder} ({blocker} is a file, not a folder)" in corpus.notice, \
        corpus.notice
    assert 'in memory' in corpus.notice, corpus.notice
    assert_same(corpus, path)


@pytest.mark.parametrize('command', ['eval', 'sample', 'sample of the run\'s data'])
def test_eval_and_sample_say_that_the_cache_could_not_be_written(tmp_path, monkeypatch, command):
    """train gave the notice; eval and sample tokenised a large file in memory on every run, saying nothing."""
    from microgpt.cli import main
    path = str(tmp_path / 'words.txt')  # over the size that is cached, in few documents (eval scores each)
    Path(path).write_text(''.join(word * 800 + '\n' for word in ('anna', 'bob', 'carla') * 120))
    assert os.path.getsize(path) >= corpus_module.CACHE_MIN_BYTES
    monkeypatch.setenv('MICROGPT_CACHE', str(tmp_path / 'cache'))
    assert main(['train', '--data', path, '--steps', '2', '--num-samples', '0', '--out', str(tmp_path / 'run')],
                out=io.StringIO(), err=io.StringIO()) == 0
    blocker = tmp_path / 'a-file'
    blocker.write_text('not a folder')
    monkeypatch.setenv('MICROGPT_CACHE', str(blocker))
    out, err = io.StringIO(), io.StringIO()
    argv = [command.split()[0], '--checkpoint', str(tmp_path / 'run' / 'model.safetensors')]
    argv += {'eval': ['--data', path], 'sample': ['--data', path, '--num-samples', '1']}.get(command,
                                                                                           ['--num-samples', '1'])
    assert main(argv, out=out, err=err) == 0, err.getvalue()
    assert err.getvalue().startswith(f"microgpt: cannot write the token cache in {blocker} ({blocker} is a file, "
                                     f"not a folder); tokenised {path} in memory"), err.getvalue()


def test_folder_problem_names_what_stands_in_the_way(tmp_path, monkeypatch):
    from microgpt.tempfiles import folder_problem
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a-file').write_text('x')
    (tmp_path / 'nowhere').symlink_to(tmp_path / 'gone')
    error = OSError(17, 'File exists')
    assert folder_problem('a-file/cache', error) == 'a-file is a file, not a folder'  # the path as given
    assert folder_problem(str(tmp_path / 'nowhere'), error) == f"{tmp_path / 'nowhere'} is a link to nothing"
    assert folder_problem(str(tmp_path / 'new' / 'cache'), error) == 'File exists'  # no file in the way
    assert folder_problem('new/cache', OSError('no code')) == 'no code'


def test_a_token_cache_and_a_download_stay_private_whatever_the_umask(cached_file, server, tmp_path):
    """They hold someone's data nearly as it is (a token a character): 0600, as the cache folder's files were
    before a run's checkpoints got the umask's permissions (test_cli.py)."""
    from microgpt.fetch import fetch
    path, cache = cached_file
    saved = os.umask(0o022)
    try:
        cached = load_corpus(path, cache_dir=cache, min_cache_bytes=0).cache_path
        download = fetch(server.url + '/names.txt', cache_dir=str(tmp_path / 'fetched'))
    finally:
        os.umask(saved)
    assert [oct(stat.S_IMODE(os.stat(p).st_mode)) for p in (cached, download)] == [oct(0o600)] * 2


def test_a_download_into_a_cache_folder_that_is_a_file_names_the_file(server, tmp_path):
    from microgpt.fetch import fetch
    blocker = tmp_path / 'a-file'
    blocker.write_text('not a folder')
    with pytest.raises(MicrogptError) as info:
        fetch(server.url + '/names.txt', cache_dir=str(blocker))
    want = f"cannot keep the download in {blocker / 'downloads'} ({blocker} is a file, not a folder)"
    assert want in str(info.value), info.value
    assert server.requests == [], server.requests


@pytest.mark.parametrize('when', ['write', 'close'])
def test_a_download_onto_a_full_disk_says_so_not_that_the_network_broke(server, tmp_path, monkeypatch, when):
    """A full cache disk was 'the download broke off after N bytes (No space left on device); check the address
    and the network'."""
    from microgpt import fetch as fetch_module

    class FullDisk(io.BufferedWriter):
        def write(self, data):
            if when == 'write':
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

        def close(self):
            super().close()
            if when == 'close':
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(fetch_module.os, 'fdopen', lambda fd, mode: FullDisk(io.FileIO(fd, 'w')))
    with pytest.raises(MicrogptError) as info:
        fetch_module.fetch(server.url + '/names.txt', cache_dir=str(tmp_path))
    assert str(info.value) == (f"{server.url}/names.txt: cannot keep the download in {tmp_path / 'downloads'} (No "
                               f"space left on device); set MICROGPT_CACHE to a folder with room, or download the file "
                               f"and give its path"), info.value
    assert os.listdir(tmp_path / 'downloads') == []


def test_a_read_only_cache_folder(cached_file, tmp_path):
    path, _ = cached_file
    folder = tmp_path / 'ro'
    folder.mkdir()
    if os.geteuid() == 0:
        proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k,ro', 'tmpfs', str(folder)], capture_output=True)
        if proc.returncode:
            if in_ci():
                pytest.fail(f"mount -t tmpfs failed in CI: {proc.stderr}")
            pytest.skip("cannot mount a read-only tmpfs here")
    else:
        folder.chmod(0o555)
    try:
        corpus = load_corpus(path, cache_dir=str(folder), min_cache_bytes=0)
        assert corpus.cache_path is None and ('Read-only' in corpus.notice or 'Permission' in corpus.notice), \
            corpus.notice
        assert_same(corpus, path)
    finally:
        if os.geteuid() == 0:
            subprocess.run(['umount', str(folder)], check=True)


def test_a_full_cache_disk_tokenises_in_memory(cached_file, tmp_path):
    path, _ = cached_file
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("CI runs as root, to mount a small tmpfs")
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / 'small'
    folder.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=8k', 'tmpfs', str(folder)], check=True)
    try:
        corpus = load_corpus(path, cache_dir=str(folder), min_cache_bytes=0)
        assert corpus.cache_path is None and 'No space left' in corpus.notice, corpus.notice
        assert os.listdir(folder) == [], os.listdir(folder)
        assert_same(corpus, path)
    finally:
        subprocess.run(['umount', str(folder)], check=True)


def test_interrupted_tokenising_leaves_no_cache(cached_file, monkeypatch):
    path, cache = cached_file
    monkeypatch.setattr(data, 'READ_BYTES', 4096)
    real, calls = corpus_module.ascii_documents, []

    def interrupted(piece):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(piece)
    monkeypatch.setattr(corpus_module, 'ascii_documents', interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_corpus(path, cache_dir=cache, min_cache_bytes=0)
    assert os.listdir(cache) == [], os.listdir(cache)
    monkeypatch.undo()
    assert_same(load_corpus(path, cache_dir=cache, min_cache_bytes=0), path)


def test_the_cache_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('MICROGPT_CACHE', str(tmp_path / 'mine'))
    assert corpus_module.cache_folder() == str(tmp_path / 'mine')
    monkeypatch.delenv('MICROGPT_CACHE')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert corpus_module.cache_folder() == str(tmp_path / 'xdg' / 'microgpt')


# ---- Documents: the same shuffles and splits as the lists of strings

@pytest.mark.slow
@pytest.mark.parametrize('bos_first', [False, True])
def test_shuffles_and_splits_match_the_lists_of_strings(names_path, bos_first):
    docs = load_documents(names_path)
    vocab = Vocabulary.from_documents(docs, bos_first)
    every = Documents(load_corpus(names_path), bos_first=bos_first)
    assert every.vocabulary() == vocab

    def tokens(strings):
        return [vocab.document_tokens(d) for d in strings]
    assert shuffled(every, random.Random(42))[:] == tokens(shuffled(docs, random.Random(42)))
    for by, fraction in (('name', None), ('name', 0.25), ('line', None), ('line', 0.05), ('makemore', None)):
        train, val = holdout_split(docs, fraction, 7, by)
        got_train, got_val = holdout_split(every, fraction, 7, by)
        assert len(got_train) == len(train) and len(got_val) == len(val), (by, len(got_train), len(train))
        assert got_train[:] == tokens(train), by
        assert got_val[:] == tokens(val), by
        again_train, _ = holdout_split(shuffled(every, random.Random(1)), fraction, 7, by)
        strings_train, _ = holdout_split(shuffled(docs, random.Random(1)), fraction, 7, by)
        assert again_train[:] == tokens(strings_train), by


@pytest.mark.parametrize('extra', [[], ['abcdefghijklmnopqrstu', 'abcdefghijklmnopqrst', 'abcdefghijklmnopqrsu']],
                         ids=['one-key', 'longer-than-a-key'])
def test_string_order_sorts_documents_as_strings_sort(tmp_path, extra):
    """Prefixes first, every character's code point order, ids beyond 255 (309 or 327 characters: 9-bit fields,
    7 characters a key); documents longer than a key are ordered by their next characters."""
    words = ['b', 'ab', 'a', 'abc', 'a b', 'é', 'ab', 'Z', 'z', '東京', '東', 'b'] + \
        [chr(0x100 + i) for i in range(300)] + extra
    path = tmp_path / 'words.txt'
    path.write_text('\n'.join(words) + '\n', encoding='utf-8')
    _check_string_order(path, words)  # equal strings in file order


def _check_string_order(path, words):
    order, first = Documents(load_corpus(str(path))).string_order()
    assert order.tolist() == sorted(range(len(words)), key=lambda i: (words[i], i))
    in_order = [words[i] for i in order]
    assert first.tolist() == [i == 0 or in_order[i] != in_order[i - 1] for i in range(len(words))]


@pytest.mark.parametrize('ties', [0, 60, 2**22], ids=['K-a-pass', '20-30-a-pass', 'one-pass'])
def test_tied_documents_are_told_apart_at_every_character(tmp_path, monkeypatch, ties):
    """Long documents equal but for one character, at each of 131 positions, beside their prefix; and two runs
    that differ in their first key ('a' * 12, 'c' * 12) but agree in the next characters, which must stay two runs.
    Tied documents are sorted again K (12) characters a pass, or 60 characters a pass among them, or at once."""
    monkeypatch.setattr(string_order_module, 'TIE_CHARACTERS', ties)
    rng = random.Random(5)
    base = ''.join(rng.choice('abcdefghijklmnopqrstuvwxy') for _ in range(131))
    tail = ''.join(rng.choice('abcdefghijklmnopqrstuvwxy') for _ in range(40))
    for at in range(len(base)):
        words = [base, base[:at] + 'z' + base[at + 1:], base[:at + 1], 'b', 'a' * 12 + tail, 'c' * 12 + tail,
                 'a' * 12 + tail + 'z', 'c' * 12 + tail[:-1]]
        path = tmp_path / f'words-{at}.txt'
        path.write_text('\n'.join(words) + '\n', encoding='utf-8')
        _check_string_order(path, words)


_split_words = st.lists(st.text('abz', min_size=1, max_size=40), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.tuples(_split_words, _split_words, st.text('abz', max_size=30)).map(
           lambda t: t[0] + [t[2] + w for w in t[1]] + t[1]),  # long shared prefixes, repeats
       fraction=st.sampled_from([None, 0.2, 0.6]), shuffle=st.booleans(), chunk=st.sampled_from([3, 7, 2**20]),
       ties=st.sampled_from([0, 60, 2**22]), wide=st.booleans())
def test_the_split_by_name_is_the_strings_split(tmp_path, monkeypatch, words, fraction, shuffle, chunk, ties, wide):
    """Documents.holdout by name (sorted by packed keys, tied runs sorted again by their next characters, K or
    more a pass) holds out the same documents in the same order as data.holdout_split on the strings, with
    repeats and long shared prefixes; with a few documents a chunk, runs and held units cross the chunks; `wide`
    adds 300 characters beyond U+00FF (uint16 tokens, 9-bit fields)."""
    monkeypatch.setattr(string_order_module, 'CHUNK', chunk)
    monkeypatch.setattr(string_order_module, 'TIE_CHARACTERS', ties)  # 0: K characters a pass, as for many ties
    words = words * 5 + ([''.join(chr(0x100 + i) for i in range(300))] if wide else [])  # each document 5 times
    path = tmp_path / 'words.txt'
    path.write_text('\n'.join(words) + '\n', encoding='utf-8')
    docs = load_documents(str(path))
    every = Documents(load_corpus(str(path)))
    if shuffle:
        docs, every = shuffled(docs, random.Random(3)), shuffled(every, random.Random(3))
    try:
        train, val = holdout_split(docs, fraction, 7, 'name')
    except MicrogptError as error:  # too few distinct documents: the same error
        with pytest.raises(MicrogptError, match=re.escape(str(error))):
            holdout_split(every, fraction, 7, 'name')
        return
    got_train, got_val = holdout_split(every, fraction, 7, 'name')
    assert list(got_train.texts()) == train
    assert list(got_val.texts()) == val


@pytest.mark.parametrize('size', [1, 2, 3, 4, 8, 31, 32, 255, 256, 511, 512, 4096, 65534])
def test_the_split_by_name_at_every_field_width(tmp_path, monkeypatch, size):
    """Alphabets at and around powers of two (fields of 1 to 16 bits, uint8 and uint16 tokens, rows of one- and
    two-byte big-endian fields), with tied long documents of the highest ids, in each way of passing."""
    alphabet = [chr(c) for c in range(0x21, 0x21 + size + 2100) if not 0xD800 <= c < 0xE000 and not chr(c).isspace()]
    alphabet = alphabet[:size]
    rng = random.Random(size)
    prefix = ''.join(rng.choice(alphabet) for _ in range(40))
    words = [''.join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(200)]
    words += [prefix + ''.join(rng.choice(alphabet[-3:]) for _ in range(rng.randint(0, 30))) for _ in range(40)]
    words = words * 2 + [''.join(alphabet)]  # repeats, and every character once
    rng.shuffle(words)
    path = tmp_path / 'words.txt'
    path.write_text('\n'.join(words) + '\n', encoding='utf-8')
    every = Documents(load_corpus(str(path)))
    assert len(every.corpus.chars) == size
    train, val = holdout_split(words, 0.3, 7, 'name')
    for ties in (0, 60, 2**20):
        monkeypatch.setattr(string_order_module, 'TIE_CHARACTERS', ties)
        _check_string_order(path, words)
        got_train, got_val = holdout_split(every, 0.3, 7, 'name')
        assert (list(got_train.texts()), list(got_val.texts())) == (train, val), ties


def test_documents_read_like_a_list(names_path):
    docs = load_documents(names_path)
    every = Documents(load_corpus(names_path))
    assert every[-1] == every[len(every) - 1] and every[3:6] == [every[3], every[4], every[5]]
    assert [every.text(i) for i in (0, 100, len(docs) - 1)] == [docs[0], docs[100], docs[-1]]
    np.testing.assert_array_equal(every.lengths(), [len(d) + 2 for d in docs])
    with pytest.raises(IndexError):
        every[len(every)]


# ---- --data URL: fetched once into the cache, from a local HTTP server

class _Server:
    """An HTTP server on 127.0.0.1 in a thread: `routes` maps a path to (status, headers, body)."""

    def __init__(self, routes):
        import http.server
        import threading
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                status, headers, body = routes.get(self.path, (404, {}, b'no such file'))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if callable(body):  # a body that writes itself (and stalls)
                    body(self.wfile)
                else:
                    self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass
        self.requests = []
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # polled every 20 ms for its shutdown (the default half second was each test's teardown)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


NAMES_BODY = b'emma\nolivia\nava\n' * 1000


def _one_byte_first(body):
    """A body that sends its first byte, waits, then the rest: the client reads them as two blocks."""
    def write(wfile):
        wfile.write(body[:1])
        wfile.flush()
        time.sleep(0.2)
        wfile.write(body[1:])
    return write


GZIPPED_BODY = gzip.compress(NAMES_BODY, mtime=0)
ZERO_PADDED = (GZIPPED_BODY + bytes(7) + gzip.compress(b'zoe\n', mtime=0)  # padded as a tape or a block device pads
               + bytes(3 * 2**20 // 2))  # over more than one block read
_raw = zlib.compressobj(wbits=-15)
ENCODED_BODIES = {'gzip': GZIPPED_BODY, 'deflate': zlib.compress(NAMES_BODY),  # deflate: zlib's wrapping, or raw
                  'raw-deflate': _raw.compress(NAMES_BODY) + _raw.flush()}


@pytest.fixture
def server():
    served = _Server({
        '/names.txt': (200, {'Content-Length': str(len(NAMES_BODY))}, NAMES_BODY),
        '/no-length.txt': (200, {}, NAMES_BODY),
        '/partial.txt': (200, {'Content-Length': str(len(NAMES_BODY) + 500)}, NAMES_BODY),
        '/forbidden.txt': (403, {}, b'go away'),
        '/my%20names%C3%A9.txt': (200, {'Content-Length': str(len(NAMES_BODY))}, NAMES_BODY),
        **{f'/{name}.txt': (200, {'Content-Length': str(len(body)), 'Content-Encoding': name.removeprefix('raw-')},
                            body) for name, body in ENCODED_BODIES.items()},
        '/gzip-cut-off.txt': (200, {'Content-Encoding': 'gzip'}, GZIPPED_BODY[:-9]),  # no length: ends early
        '/two-members.txt': (200, {'Content-Encoding': 'gzip'}, GZIPPED_BODY + gzip.compress(b'zoe\n', mtime=0)),
        '/gzip-then-junk.txt': (200, {'Content-Encoding': 'gzip'}, GZIPPED_BODY + b'junk after the end'),
        '/zero-padded.txt': (200, {'Content-Encoding': 'gzip'}, ZERO_PADDED),
        '/padding-then-junk.txt': (200, {'Content-Encoding': 'gzip'}, GZIPPED_BODY + bytes(3) + b'junk'),
        '/deflate-one-byte-first.txt': (200, {'Content-Encoding': 'deflate'},
                                        _one_byte_first(ENCODED_BODIES['raw-deflate'])),
        '/a@b.txt?user=a@b': (200, {}, NAMES_BODY),
        '/brotli.txt': (200, {'Content-Encoding': 'br'}, b'\x1b\x00\x00'),
        '/': (200, {'Content-Type': 'text/html; charset=utf-8'}, b'<html><body><a href="names.txt">names.txt</a>'),
    })
    yield served
    served.close()


def test_a_url_is_fetched_once_and_reused(server, tmp_path):
    from microgpt.fetch import fetch, is_url
    url = server.url + '/names.txt'
    assert is_url(url) and not is_url(str(tmp_path / 'names.txt')) and not is_url('ftp://x/y')
    seen = []
    path = fetch(url, cache_dir=str(tmp_path), progress=lambda done, total: seen.append((done, total)))
    assert open(path, 'rb').read() == NAMES_BODY
    assert seen[0] == (0, len(NAMES_BODY)) and seen[-1] == (len(NAMES_BODY), len(NAMES_BODY)), seen
    assert fetch(url, cache_dir=str(tmp_path)) == path and server.requests == ['/names.txt'], server.requests
    assert load_documents(path)[:3] == ['emma', 'olivia', 'ava']
    assert fetch(server.url + '/no-length.txt', cache_dir=str(tmp_path)) != path


@pytest.mark.parametrize('route, fragment', [
    ('/missing.txt', '404'), ('/forbidden.txt', '403 Forbidden'), ('/partial.txt', 'partial download, 16,000 of 16,500 bytes'),
    ('/', 'is a web page (text/html), not a text file of documents'),  # a folder listing was trained on
])
def test_a_failed_or_partial_download_is_one_line_and_leaves_nothing(server, tmp_path, route, fragment):
    from microgpt.fetch import fetch
    with pytest.raises(MicrogptError) as info:
        fetch(server.url + route, cache_dir=str(tmp_path))
    message = str(info.value)
    assert fragment in message and server.url + route in message and '\n' not in message, message
    assert os.listdir(tmp_path / 'downloads') == [], os.listdir(tmp_path / 'downloads')


def test_an_address_with_spaces_or_other_letters_is_fetched_as_a_browser_would(server, tmp_path):
    """'my namesé.txt' was 'the download broke off after 0 bytes (URL can't contain control characters)': it is
    sent percent-encoded, as a browser does, and an address that is already encoded is sent as it is."""
    from microgpt.fetch import fetch
    for route in ('/my namesé.txt', '/my%20names%C3%A9.txt'):
        assert open(fetch(server.url + route, cache_dir=str(tmp_path)), 'rb').read() == NAMES_BODY
    assert server.requests == ['/my%20names%C3%A9.txt'] * 2, server.requests


@pytest.mark.parametrize('encoding', list(ENCODED_BODIES) + ['two-members', 'deflate-one-byte-first', 'zero-padded'])
def test_a_response_sent_encoded_is_kept_decoded(server, tmp_path, encoding):
    """A server may compress a response (Content-Encoding) though nobody asked: the gzip bytes were kept, and the
    run said the download was not text. A gzip or deflate body is decoded as it arrives (progress counts the bytes
    sent, as announced)."""
    from microgpt.fetch import fetch
    seen = []
    path = fetch(server.url + f'/{encoding}.txt', cache_dir=str(tmp_path),
                 progress=lambda done, total: seen.append((done, total)))
    want = NAMES_BODY + (b'zoe\n' if encoding in ('two-members', 'zero-padded') else b'')
    if encoding == 'zero-padded':
        assert gzip.decompress(ZERO_PADDED) == want  # as Python's gzip reads it
    assert open(path, 'rb').read() == want
    if encoding in ENCODED_BODIES:
        sent = len(ENCODED_BODIES[encoding])
        assert seen[-1] == (sent, sent), seen


@pytest.mark.parametrize('route, fragment', [
    ('/brotli.txt', "encoded as 'br', which microgpt does not decode"),
    ('/gzip-cut-off.txt', "encoded as 'gzip', and it does not decode (it ends early)"),
    ('/gzip-then-junk.txt', "encoded as 'gzip', and it does not decode ("),
    ('/padding-then-junk.txt', "encoded as 'gzip', and it does not decode ("),
    ('/gzip.txt', 'decodes to more than 15,000 bytes with no announced size')])  # under a cap of 15,000
def test_an_encoding_that_cannot_be_decoded_is_one_line_and_leaves_nothing(server, tmp_path, route, fragment,
                                                                           monkeypatch):
    """...and a body that decodes to more than MAX_STREAM_BYTES is refused as it decodes (its announced length is
    of the encoded bytes), not once a block of a few kilobytes has become gigabytes in memory."""
    from microgpt import fetch as fetch_module
    from microgpt.fetch import fetch
    if 'more than' in fragment:
        monkeypatch.setattr(fetch_module, 'MAX_STREAM_BYTES', 15_000)
        monkeypatch.setattr(fetch_module, 'BLOCK_BYTES', 1000)
    with pytest.raises(MicrogptError) as info:
        fetch(server.url + route, cache_dir=str(tmp_path))
    assert fragment in str(info.value) and '\n' not in str(info.value), info.value
    assert os.listdir(tmp_path / 'downloads') == [], os.listdir(tmp_path / 'downloads')


@pytest.mark.parametrize('userinfo', ['reader:s3cret-pw@', 's3cret-token@', ':s3cret-pw@', 'a:s3cret@b@'])
def test_an_address_with_a_user_or_password_is_refused_without_printing_the_password(server, tmp_path, userinfo):
    """`--data https://user:password@host/file` said 'cannot download (Name or service not known)' and printed the
    password. It is refused before any request, the user name and password shown as *** (a token often stands in
    the user name): a run keeps its data's address in its checkpoint and metrics and prints it, and credentials do
    not belong there."""
    url = server.url.replace('://', '://' + userinfo) + '/names.txt'
    code, out, err = run_cli_in_process('train', '--data', url, '--steps', 1, '--num-samples', 0,
                                        '--out', tmp_path / 'run')
    assert_one_line_error(code, out, err, 'a user name or password', 'download the file and give its path',
                          server.url.replace('://', '://***@') + '/names.txt')
    assert 's3cret' not in err + out, (out, err)
    assert server.requests == [] and not (tmp_path / 'run').exists(), server.requests


@pytest.mark.parametrize('address', ['http://u:s3cret@[::1/names.txt', 'ftp://u:s3cret@example.com/names.txt'])
def test_an_address_that_is_not_fetched_does_not_print_its_password(address):
    code, out, err = run_cli_in_process('train', '--data', address, '--steps', 1)
    assert_one_line_error(code, out, err, '://***@')
    assert 's3cret' not in err + out, (out, err)


def test_an_at_sign_in_the_path_or_query_is_no_user_name(server, tmp_path):
    from microgpt.fetch import fetch
    assert open(fetch(server.url + '/a@b.txt?user=a@b', cache_dir=str(tmp_path)), 'rb').read() == NAMES_BODY


def test_a_download_that_never_started_does_not_say_it_broke_off(tmp_path):
    """An address urllib refuses to send ('nonnumeric port') was 'the download broke off after 0 bytes'."""
    from microgpt.fetch import fetch
    url = "http://127.0.0.1:12x/names.txt"
    with pytest.raises(MicrogptError) as info:
        fetch(url, cache_dir=str(tmp_path))
    assert str(info.value).startswith(f"{url}: cannot download (nonnumeric port"), info.value


@contextmanager
def _stalling_address():
    """The address of a file whose server sends half the body it announces, then nothing until the block ends."""
    import threading
    released = threading.Event()

    def stall(wfile):
        wfile.write(NAMES_BODY)
        wfile.flush()
        released.wait(30)
    served = _Server({'/stalls.txt': (200, {'Content-Length': str(2 * len(NAMES_BODY))}, stall)})
    try:
        yield served.url + '/stalls.txt'
    finally:
        released.set()
        served.close()


def test_a_stalled_download_says_how_much_arrived(monkeypatch, tmp_path):
    """The bytes that arrived before the stall are counted (a read of a whole block waited for the rest and
    reported none)."""
    from microgpt import fetch as fetch_module
    monkeypatch.setattr(fetch_module, 'TIMEOUT_S', 1.0)
    with _stalling_address() as address:
        with pytest.raises(MicrogptError, match=f'broke off after {len(NAMES_BODY):,} bytes .*timed out'):
            fetch_module.fetch(address, cache_dir=str(tmp_path))
    assert os.listdir(tmp_path / 'downloads') == []


@pytest.mark.slow(seconds=3)  # a process of its own
@pytest.mark.parametrize('command', ['eval', 'train'])
def test_sigterm_during_a_download_ends_the_command_as_ctrl_c_does(tmp_path, monkeypatch, command):
    """SIGTERM (`timeout`'s, a scheduler's) while eval downloads its --data, or train before its first step, killed the
    process at once: the download's temporary stayed in the cache. It now unwinds as Ctrl-C does: the temporary
    removed, one line, exit status 143 (128 + SIGTERM)."""
    import signal
    from microgpt.cli import main
    data = tmp_path / 'names.txt'
    data.write_bytes(NAMES_BODY)
    run_dir, cache = tmp_path / 'run', tmp_path / 'cache'
    assert main(['train', '--data', str(data), '--steps', '2', '--num-samples', '0', '--out', str(run_dir)],
                out=io.StringIO(), err=io.StringIO()) == 0
    with _stalling_address() as address:
        argv = (['eval', '--checkpoint', str(run_dir / 'model.safetensors')] if command == 'eval' else
                ['train', '--steps', '2', '--out', str(tmp_path / 'second')]) + ['--data', address]
        proc = subprocess.Popen([sys.executable, '-m', 'microgpt', *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=dict(os.environ, MICROGPT_CACHE=str(cache)))
        try:
            deadline = time.monotonic() + 60
            while not (os.path.isdir(cache / 'downloads') and os.listdir(cache / 'downloads')) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [name.startswith('.tmp-download-') for name in os.listdir(cache / 'downloads')] == [True]
            time.sleep(0.2)  # the first half arrives
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 143 and err.decode() == 'microgpt: terminated\n', (proc.returncode, err)
    assert os.listdir(cache / 'downloads') == [] and not os.path.exists(tmp_path / 'second'), os.listdir(cache)


def test_a_refused_connection_is_one_line(tmp_path):
    import socket
    from microgpt.fetch import fetch
    with socket.socket() as s:  # a port nobody listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    with pytest.raises(MicrogptError, match='cannot download .*refused'):
        fetch(f"http://127.0.0.1:{port}/names.txt", cache_dir=str(tmp_path))


@pytest.mark.parametrize('bos_first', [False, True])
def test_pack_is_the_documents_back_to_back(names_path, bos_first):
    every = shuffled(Documents(load_corpus(names_path), bos_first=bos_first), random.Random(3))
    for first, count, keep in ((0, 1, 17), (5, 64, 17), (len(every) - 3, 10, 4), (2 * len(every) + 7, 5, 100)):
        tokens, starts = every.pack(first, count, keep)
        want, want_starts = [], [0]
        for d in range(first, first + count):
            want += every[d % len(every)][:keep]
            want_starts.append(len(want))
        assert tokens.dtype == np.int64 and tokens.tolist() == want, (first, count, keep)
        assert starts.tolist() == want_starts, (first, count, keep)


def test_tokenising_reports_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(data, 'READ_BYTES', 4096)
    path = write_words(tmp_path / 'words.txt', 5000)
    size, seen = os.path.getsize(path), []
    load_corpus(path, cache_dir=str(tmp_path / 'cache'), min_cache_bytes=0,
                progress=lambda done, total: seen.append((done, total)))
    assert len(seen) >= size // 4096 and seen[-1] == (size, size), (len(seen), seen[-1], size)
    assert all(a[0] < b[0] for a, b in zip(seen, seen[1:])), seen


def test_a_killed_tokenisation_leaves_a_temporary_the_next_one_removes(cached_file):
    path, cache = cached_file
    os.makedirs(cache)
    for name in ('.tmp-tokens-999999999-x.bin', '.tmp-tokens-abc.bin'):
        with open(os.path.join(cache, name), 'wb') as f:
            f.write(b'partial')
    corpus = load_corpus(path, cache_dir=cache, min_cache_bytes=0)
    assert os.listdir(cache) == [os.path.basename(corpus.cache_path)], os.listdir(cache)


def test_ascii_pieces_give_the_documents_of_split_lines():
    """ascii_documents' C-speed paths (CRLF, blank lines, clean lines) against split_lines, on many pieces."""
    alphabet = ['a', 'b', ' ', '\t', '\n', '\r', '\r\n', '\x0b', '\x0c', '\x1c', '\x1f', '\n\n', '-']
    rng = random.Random(0)
    for _ in range(20000):
        text = ''.join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        want = ''.join(doc + '\n' for doc in data.split_lines(text)).encode()
        assert corpus_module.ascii_documents(text.encode()) == want, text


def test_texts_are_the_strings(names_path):
    every = shuffled(Documents(load_corpus(names_path)), random.Random(5))
    assert list(every.texts()) == shuffled(load_documents(names_path), random.Random(5))


def test_a_run_trained_from_a_url_is_evaluated_sampled_and_exported_from_the_cached_copy(server, tmp_path,
                                                                                          monkeypatch):
    """eval, sample and export --train read a checkpoint's URL data from the download cache (they said the data
    'is not there'), also once the server is gone."""
    monkeypatch.setenv('MICROGPT_CACHE', str(tmp_path / 'cache'))
    url, run = server.url + '/names.txt', tmp_path / 'run'
    code, out, err = run_cli_in_process('train', '--data', url, '--steps', 10, '--eval-every', 5, '--val-split', 'line',
                                        '--out', run, '--num-samples', 0)  # 3 distinct names: held out by line
    assert code == 0, err
    server.close()
    checkpoint = run / 'model.safetensors'
    code, out, err = run_cli_in_process('eval', '--checkpoint', checkpoint)
    assert code == 0 and f"(the held-out split of {url})" in out, (out, err)
    code, out, err = run_cli_in_process('sample', '--checkpoint', checkpoint, '--num-samples', 5)
    assert code == 0 and 'novel: ' in out and err == '', (out, err)
    code, out, err = run_cli_in_process('export', '--train', '--checkpoint', checkpoint, '--out', tmp_path / 'c')
    assert code == 0 and (tmp_path / 'c' / 'microgpt_train.c').is_file(), (out, err)
    from microgpt.export.web import training_documents
    from microgpt.train.checkpoint import load_checkpoint
    docs, name = training_documents(load_checkpoint(str(checkpoint)))  # the page's Train button's documents
    assert name == 'names.txt' and set(docs) == {'emma', 'olivia', 'ava'}, (name, docs and docs[:3])


@pytest.mark.slow(seconds=1)  # bench times whole `microgpt train` processes too
def test_bench_takes_a_url(server, tmp_path, monkeypatch):
    """bench, study and tune fetch --data URL as train does (they said 'only http:// and https:// addresses are
    downloaded' of an https address)."""
    monkeypatch.setenv('MICROGPT_CACHE', str(tmp_path / 'cache'))
    code, out, err = run_cli_in_process('bench', '--data', server.url + '/names.txt', '--engines', 'numpy',
                                        '--steps', 2)
    assert code == 0 and out.count('numpy') >= 2, (out, err)
    with pytest.raises(MicrogptError, match='is a web address; download the file and give its path'):
        load_documents(server.url + '/names.txt')  # a caller that does not fetch is told so, not 'no such file'


def test_the_novelty_check_counts_only_the_documents_trained_on(tmp_path):
    """With a held-out split, a sampled name that is only in the held-out part was never trained on: it is novel."""
    from microgpt.train.recorded import trained_documents
    from microgpt.train.checkpoint import load_checkpoint
    names = [f"{a}{b}{c}" for a in 'abcd' for b in 'aeiou' for c in 'lmnrs']  # 100 distinct names
    data = tmp_path / 'names.txt'
    data.write_text('\n'.join(names) + '\n')
    code, out, err = run_cli_in_process('train', '--data', data, '--steps', 3, '--eval-every', 3, '--out',
                                        tmp_path / 'run', '--num-samples', 0)
    assert code == 0, err
    train, held_out = holdout_split(names, None, 42, 'name')
    assert len(held_out) == 10, held_out
    assert set(trained_documents(load_checkpoint(str(tmp_path / 'run' / 'model.safetensors')))) == set(train)


@pytest.mark.parametrize('address', ['file:///no/such/names.txt', 'ftp://example.com/names.txt'])
def test_an_address_that_is_not_http_says_so(address):
    with pytest.raises(MicrogptError, match='only http:// and https:// addresses are downloaded'):
        load_documents(address)


class _Terminal(io.StringIO):
    """A standard error that says it is a terminal (with no size: the bars take their fallback width)."""

    def isatty(self):
        return True


@pytest.mark.parametrize('on_a_terminal', [True, False])
def test_train_shows_the_download_and_the_first_read_as_bars_of_bytes_on_a_terminal(server, tmp_path, monkeypatch,
                                                                                     on_a_terminal):
    """The issue's progress bar for a --data URL's download (and a big file's first read, the same callback): on a
    terminal's standard error, a bar of bytes, gone (tqdm's leave=False) before the run's header; none on a pipe."""
    from microgpt.cli import main
    monkeypatch.setenv('MICROGPT_CACHE', str(tmp_path / 'cache'))
    out, err = io.StringIO(), _Terminal() if on_a_terminal else io.StringIO()
    code = main(['train', '--data', server.url + '/names.txt', '--steps', '2', '--num-samples', '1'], out=out, err=err)
    assert code == 0, err.getvalue()
    bars = re.findall(r'data: +\d+%\|[^\r\n]*\| [0-9.]+k?/16\.0k', err.getvalue())  # of the 16,000 bytes
    assert bool(bars) == on_a_terminal, err.getvalue()
    assert out.getvalue().startswith('num docs: 3000\n')


@pytest.mark.slow(seconds=1)  # a run trained and evaluated: the quick loop has one (the data bar's)
def test_eval_of_a_run_whose_address_no_longer_answers_gives_advice_for_an_address(tmp_path, monkeypatch):
    """eval scores a run's held-out split from its data: where that was an address that no longer answers, the
    advice was a file's ('put the run's own data back there'), after the download's own ('download the file and give
    its path'), which as --data scores the file whole."""
    from microgpt.cli import main
    served = _Server({'/names.txt': (200, {'Content-Length': str(len(NAMES_BODY))}, NAMES_BODY)})
    monkeypatch.setenv('MICROGPT_CACHE', str(tmp_path / 'cache'))
    argv = ['train', '--data', served.url + '/names.txt', '--steps', '2', '--eval-every', '2', '--val-split', 'line',
            '--num-samples', '0', '--out', str(tmp_path / 'run')]
    assert main(argv, out=io.StringIO(), err=io.StringIO()) == 0
    served.close()
    monkeypatch.setenv('MICROGPT_CACHE', str(tmp_path / 'elsewhere'))  # its download is not there
    code, out, err = run_cli_in_process('eval', '--checkpoint', str(tmp_path / 'run' / 'model.safetensors'))
    assert code == 2 and out == '' and err.count('\n') == 1 and 'cannot download' in err, (code, err)
    assert err.endswith("(as --data, a file is scored whole; the run's held-out split is scored from the address's "
                        "download, fetched once and kept)\n") and 'put the run' not in err, err


def test_a_gzip_downloads_tokenising_gets_a_bar_of_its_own():
    """A download sent gzip-encoded counts its encoded bytes, fewer than the file's, so tokenising the file then counted
    up from there in the download's bar, past its total and with a rate of both. A count with another total is the
    next bar, as one that starts again is."""
    from microgpt.bars import DataBar
    bar = DataBar(_Terminal())
    bar(300, 615)
    bar(615, 615)
    download = bar.bar
    bar(1000, 1368)
    assert bar.bar is not download and (bar.bar.total, bar.bar.n) == (1368, 1000), (bar.bar.total, bar.bar.n)
    tokenising = bar.bar
    bar(1368, 1368)
    assert bar.bar is tokenising and bar.bar.n == 1368
    bar(200, 1368)  # the same total, counting again: the next
    assert bar.bar is not tokenising and bar.bar.n == 200
    bar.close()


@pytest.mark.parametrize('command', quick_loop(['eval', 'sample'], ['eval']))
def test_eval_and_sample_show_the_download_of_the_runs_data_as_a_bar_on_a_terminal(server, tmp_path, monkeypatch,
                                                                                   command):
    """A run trained on a URL, then evaluated or sampled where its download is not cached: the command fetches the
    recorded address again, under the same bar of bytes as train on a terminal, gone before the command's own
    output; none on a pipe."""
    from microgpt.cli import main
    monkeypatch.setenv('MICROGPT_CACHE', str(tmp_path / 'cache'))
    argv = ['train', '--data', server.url + '/names.txt', '--steps', '2', '--eval-every', '2', '--val-split', 'line',
            '--num-samples', '0', '--out', str(tmp_path / 'run')]
    trained = io.StringIO()
    assert main(argv, out=io.StringIO(), err=trained) == 0, trained.getvalue()
    for cache, on_a_terminal in (('terminal', True), ('pipe', False)):
        monkeypatch.setenv('MICROGPT_CACHE', str(tmp_path / cache))  # nothing downloaded there yet
        out, err = io.StringIO(), _Terminal() if on_a_terminal else io.StringIO()
        code = main([command, '--checkpoint', str(tmp_path / 'run' / 'model.safetensors')], out=out, err=err)
        assert code == 0, err.getvalue()
        bars = re.findall(r'data: +\d+%\|[^\r\n]*\| [0-9.]+k?/16\.0k', err.getvalue())  # of the 16,000 bytes
        assert bool(bars) == on_a_terminal, (cache, err.getvalue())
        assert os.listdir(tmp_path / cache / 'downloads'), cache
        want = r'loss [0-9.]+ nats per character on 300 documents' if command == 'eval' else r'sample  1: \w'
        assert re.match(want, out.getvalue()), out.getvalue()


def test_a_download_that_is_not_text_is_not_kept_and_a_fixed_server_is_fetched_again(tmp_path, monkeypatch):
    """A download that is not text (here Latin-1 bytes) would otherwise stay in the cache and fail every later run
    of any command, the server fixed or not: the error names the address and says the file was not kept."""
    from microgpt.cli import main
    monkeypatch.setenv('MICROGPT_CACHE', str(tmp_path / 'cache'))
    routes = {'/x.txt': (200, {}, 'anna\nbj\xf6rn\n'.encode('latin-1'))}
    served = _Server(routes)
    try:
        url = served.url + '/x.txt'
        out, err = io.StringIO(), io.StringIO()
        assert main(['train', '--data', url, '--steps', '1', '--num-samples', '1'], out=out, err=err) == 2
        assert err.getvalue().startswith(f'microgpt: error: {url}: not UTF-8 text (invalid byte at offset 7)') \
            and 'the download was not kept' in err.getvalue(), err.getvalue()
        assert main(['bench', '--data', url, '--engines', 'numpy'], out=io.StringIO(), err=err) == 2  # every command
        assert not list((tmp_path / 'cache').rglob('*x.txt'))
        routes['/x.txt'] = (200, {}, 'anna\nbjörn\n'.encode('utf-8'))
        out, err = io.StringIO(), io.StringIO()
        assert main(['train', '--data', url, '--steps', '1', '--num-samples', '1'], out=out, err=err) == 0, err.getvalue()
        assert served.requests == ['/x.txt'] * 3 and 'vocab size: 7' in out.getvalue(), out.getvalue()
    finally:
        served.close()


def _alphabet(size):
    """`size` characters from U+0100 on: no surrogates, no whitespace."""
    return [chr(c) for c in range(0x100, 0x100 + size + 2100)
            if not 0xD800 <= c < 0xE000 and not chr(c).isspace()][:size]


def test_a_download_over_the_alphabet_limit_is_not_kept(tmp_path):
    """A download's check skipped the limit of 65,534 distinct characters, which only tokenising saw: the file
    stayed in the cache and failed every later run, the error naming the cached copy, not the address."""
    from microgpt.fetch import fetch
    served = _Server({'/wide.txt': (200, {}, '\n'.join(_alphabet(65535)).encode('utf-8') + b'\n'),
                      '/widest.txt': (200, {}, '\n'.join(_alphabet(65534)).encode('utf-8') + b'\n')})
    try:
        with pytest.raises(NotData) as info:
            fetch(served.url + '/wide.txt', cache_dir=str(tmp_path))
        assert str(info.value) == (f"{served.url}/wide.txt: more than 65534 distinct characters; a character-level "
                                   f"model needs a smaller alphabet; {TEXT_HINT}; the download was not kept"), \
            info.value
        assert os.listdir(tmp_path / 'downloads') == []
        assert len(load_corpus(fetch(served.url + '/widest.txt', cache_dir=str(tmp_path))).chars) == 65534
    finally:
        served.close()


def test_data_paths_and_messages_read_as_given(tmp_path, monkeypatch):
    """A file named 'http:x.txt' was taken for an address ('cannot download (no host given)'); a redirect loop's
    reason printed its line breaks as '\\n'; file:// was 'a file file's local path'; MICROGPT_CACHE='~/x' (from a
    .env file, unexpanded) made a folder named '~' here."""
    from microgpt.data import cache_folder, check_data_path
    from microgpt.fetch import fetch, is_url
    assert not is_url('http:x.txt') and is_url('http://host/x.txt')
    served = _Server({'/loop': (302, {'Location': '/loop'}, b'')})
    try:
        with pytest.raises(MicrogptError) as info:
            fetch(served.url + '/loop', cache_dir=str(tmp_path))
        assert '\n' not in str(info.value) and 'redirect error that would lead to an infinite loop' in str(info.value)
    finally:
        served.close()
    with pytest.raises(MicrogptError, match=r"^file:///nowhere/x.txt: only http:// and https:// addresses are "
                                            r"downloaded; give the file's local path, or its http\(s\) address$"):
        check_data_path('file:///nowhere/x.txt')
    monkeypatch.setenv('MICROGPT_CACHE', '~/microgpt-cache')
    assert cache_folder() == os.path.join(os.path.expanduser('~'), 'microgpt-cache')


def test_eval_of_data_with_characters_the_model_lacks_names_the_file(tmp_path):
    """It said the prompt's words, "'́', '😀' not in the model's vocabulary; use only these characters": no file,
    and a bare combining accent."""
    from microgpt.documents import file_documents
    path = tmp_path / 'other.txt'
    path.write_text('anna\nzoe\u0301\nbob\U0001F600\n', encoding='utf-8')
    with pytest.raises(MicrogptError) as info:
        file_documents(str(path), Vocabulary('abenoz'))
    assert str(info.value) == (f"{path} holds '\\u0301', '\U0001F600', not in the model's vocabulary; give data of "
                               f"its 6 characters: 'a', 'b', 'e', 'n', 'o', 'z'"), info.value


@pytest.mark.parametrize('ascii_first', [False, True], ids=['one-piece', 'ascii-pieces-first'])
def test_the_alphabet_check_counts_what_every_piece_holds(tmp_path, monkeypatch, ascii_first):
    """A first version counted only the pieces holding non-ASCII text: 94 ASCII characters in pieces of their own,
    then 65,500 others, passed a download's check that tokenising then refused. Line ends and spaces stripped
    from the lines count for nothing: 65,534 characters are taken."""
    from microgpt.data import check_text
    monkeypatch.setattr(data, 'READ_BYTES', 4096)
    head = ''.join(chr(c) + '\n' for c in range(0x21, 0x7f)) * 100 if ascii_first else ''
    for size, refused in ((65534 - 94 * ascii_first, False), (65535 - 94 * ascii_first, True)):
        path = tmp_path / f'{size}.txt'
        path.write_text(head + ' \t\r\n'.join(_alphabet(size)) + '\n', encoding='utf-8')
        if refused:
            with pytest.raises(NotData, match='more than 65534 distinct characters'):
                check_text(str(path))
            with pytest.raises(NotData, match='more than 65534 distinct characters'):
                load_documents(str(path))
        else:
            check_text(str(path))
            assert len(set().union(*load_documents(str(path)))) == 65534


def test_every_engine_refuses_an_alphabet_over_the_limit(tmp_path):
    """The reference engine, which reads documents as strings, trained on 65,535 and more distinct characters and
    saved a checkpoint that eval, sample and --resume with another engine refused."""
    from microgpt.cli import main
    path = tmp_path / 'wide.txt'
    path.write_text('\n'.join(_alphabet(65535)) + '\n', encoding='utf-8')
    for engine in ('reference', 'numpy'):
        out, err = io.StringIO(), io.StringIO()
        assert main(['train', '--data', str(path), '--engine', engine, '--steps', '1'], out=out, err=err) == 2
        assert err.getvalue() == (f"microgpt: error: {path}: more than 65534 distinct characters; a character-level "
                                  f"model needs a smaller alphabet; {TEXT_HINT}\n"), (engine, err.getvalue())


@pytest.mark.parametrize('argv, fragment', [
    (['train', '--data', 'http://[::1/x'], "http://[::1/x: not a valid web address"),
    (['bench', '--data', 'https://[bad', '--engines', 'numpy'], "https://[bad: not a valid web address"),
    (['train', '--engine', 'fused', '--dtype', 'bfloat16'], "--dtype bfloat16 is autocast in the torch engine"),
])
def test_a_malformed_address_and_an_engine_without_the_dtype_are_one_line_errors(argv, fragment, tmp_path, monkeypatch):
    from microgpt.cli import main
    monkeypatch.setenv('MICROGPT_CACHE', str(tmp_path / 'cache'))
    err = io.StringIO()
    assert main(argv + ['--steps', '1'] if argv[0] == 'train' else argv, out=io.StringIO(), err=err) == 2
    assert err.getvalue().startswith(f'microgpt: error: {fragment}') and err.getvalue().count('\n') == 1, \
        err.getvalue()


def test_the_web_page_leaves_out_training_data_too_large_to_embed(tmp_path, monkeypatch):
    """The page's Train button's documents are counted in the token cache before any string is made: a big list
    was read whole, a string a line, to be refused."""
    import microgpt.export.web as web
    import microgpt.train.recorded
    from microgpt.train.checkpoint import load_checkpoint
    data = tmp_path / 'names.txt'
    data.write_text('emma\nolivia\nava\n' * 10)
    code, out, err = run_cli_in_process('train', '--data', data, '--steps', 2, '--out', tmp_path / 'run',
                                        '--num-samples', 0)
    assert code == 0, err
    ckpt = load_checkpoint(str(tmp_path / 'run' / 'model.safetensors'))
    monkeypatch.setattr(microgpt.train.recorded, 'load_documents', None)  # a list of strings would fail now
    monkeypatch.setattr(web, 'MAX_EMBEDDED_CHARS', 130)  # the 130 characters of the 30 lines fit
    assert web.training_documents(ckpt) == (['emma', 'olivia', 'ava'] * 10, 'names.txt')
    monkeypatch.setattr(web, 'MAX_EMBEDDED_CHARS', 129)
    assert web.training_documents(ckpt) == (None, 'names.txt is too large to put in the page; paste a list')

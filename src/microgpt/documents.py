"""The documents of a Corpus as a sequence of token lists, in a chosen order, with no Python object per document.

`Documents` stands where a list of `vocab.document_tokens(doc)` stood: `len(docs)`, `docs[i]` (the list
[BOS] + ids + [BOS]), `docs[a:b]` (a list of them), so the training loop, the engines and evaluation take
either. Shuffling and the held-out splits give the same documents in the same order as data.py's functions
on the list of strings: shuffling permutes positions with the very same draws, and the split by name sorts
the documents as strings sort (token ids follow code points, so sort keys built from the ids order the
documents as their strings).
"""

import os
import random

import numpy as np

from .data import Vocabulary, check_split, holdout_draw, named_characters, validation_size
from .errors import MicrogptError
from .makemore_split import makemore_positions
from .permutation import shuffled_positions
from .string_order import nth_true, ranges, string_order
from .tempfiles import remove_quietly

CHUNK = 2**20  # characters of documents compared at a time by Documents.found
LONG_DOCUMENT = 64  # tokens from which a document read alone is checked with NumPy


class Documents:
    def __init__(self, corpus, order=None, bos_first=False):
        self.corpus = corpus
        self.order = order  # (D,) corpus indices; None: all of them in the file's order (no array to build)
        self.bos_first = bos_first

    def __len__(self):
        return len(self.corpus) if self.order is None else len(self.order)

    def indices(self, positions=None):
        """Corpus indices of `positions` of this sequence (all when None), as int64."""
        if self.order is None:
            return np.arange(len(self), dtype=np.int64) if positions is None else np.asarray(positions, np.int64)
        return self.order if positions is None else self.order[np.asarray(positions, dtype=np.int64)]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        # on the training loop's path (a document per step): memoryviews index and slice the arrays as Python
        # sequences (bounds checked, a negative i counted from the end, Python ints), twice as fast as NumPy here
        tokens, bounds, order = self._views or self._make_views()
        d = range(len(bounds) - 1)[i] if order is None else order[i]
        ids, bos = tokens[bounds[d]:bounds[d + 1] + 1], len(self.corpus.chars)
        if len(ids) > LONG_DOCUMENT:  # NumPy's passes, faster on a long document than Python's
            ids = np.asarray(ids)
            whole = ids[0] == ids[-1] == ids.max() == bos and np.count_nonzero(ids == bos) == 2
            ids = ((ids.astype(np.int64) + 1) % (bos + 1) if self.bos_first else ids).tolist()
        else:
            ids = ids.tolist()
            whole = len(ids) >= 2 and ids[0] == ids[-1] == max(ids) == bos and ids.count(bos) == 2
            if self.bos_first:  # BOS (= len(chars)) becomes 0 and every character moves up by one
                ids = [(t + 1) % (bos + 1) for t in ids]
        if not whole:  # a BOS at each end and none inside, no id above it
            self._damaged(f"document {d}")
        return ids

    _views = None  # (tokens, bounds, order) as memoryviews, made at the first document read

    def _make_views(self):
        corpus = self.corpus
        self._views = (memoryview(corpus.tokens), memoryview(corpus.bounds),
                       None if self.order is None else memoryview(self.order))
        return self._views

    def _damaged(self, what):
        """Stop on token data that cannot be the tokenisation of any file: a cache damaged since it was written
        (its ends are checked when it is opened; its middle only here, as documents are read). The cache is
        removed, so that the next run tokenises the file again, unless another run has replaced it since."""
        path = self.corpus.cache_path
        if path is None:
            raise MicrogptError(f"the tokenised data is damaged ({what})")
        try:
            if os.stat(path).st_ino == self.corpus.cache_inode:
                remove_quietly(path)
        except OSError:
            pass  # already gone
        raise MicrogptError(f"{path}: the token cache is damaged ({what}); it was removed: run again to tokenise "
                            f"the data anew")

    def _inside(self, begin, lengths, least):
        """Whether the runs of tokens begin[i] .. begin[i] + lengths[i] - 1 are each at least `least` long and inside
        the token array: bounds that a damaged cache may break."""
        return lengths.min() >= least and np.all(begin + lengths <= len(self.corpus.tokens))

    def _find_damage(self, first, count):
        """Name the first damaged document of pack's batch (reading each one checks it)."""
        for k in range(count):
            self[(first + k) % len(self)]
        self._damaged(f"positions {first % len(self)} to {(first + count - 1) % len(self)}")

    def __getstate__(self):
        return {**self.__dict__, '_views': None}  # a memoryview cannot be pickled: the copy makes its own

    def text(self, i):
        """Document i as a string."""
        d, bounds, chars = int(self.indices([i])[0]), self.corpus.bounds, self.corpus.chars
        return ''.join(chars[t] for t in self.corpus.tokens[int(bounds[d]) + 1:int(bounds[d + 1])].tolist())

    def texts(self):
        """Each document as a string, in this order: a list, one Python object each (for small uses and tests).
        The characters of every document and the BOS after it, decoded at once as UTF-32, split at the BOS."""
        d = self.indices()                                                    # (D,) corpus indices
        begin = self.corpus.bounds[d].astype(np.int64) + 1                    # (D,) each one's first character
        counts = self.corpus.bounds[d + 1].astype(np.int64) - begin + 1       # (D,) its characters and a BOS
        if len(d) and not self._inside(begin, counts, 1):
            self._find_damage(0, len(self))
        starts = np.zeros(len(d), np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        at = np.repeat(begin - starts, counts) + np.arange(int(counts.sum()))  # positions in the corpus
        code_points = np.array([ord(ch) for ch in self.corpus.chars] + [ord('\n')], np.uint32)  # BOS: a line break
        tokens = self.corpus.tokens[at]
        if len(tokens) and (tokens.max() > len(self.corpus.chars)
                            or np.count_nonzero(tokens == len(self.corpus.chars)) != len(d)):
            self._find_damage(0, len(self))
        return code_points[tokens].tobytes().decode('utf-32-le').split('\n')[:-1]

    def vocabulary(self):
        return Vocabulary(self.corpus.chars, self.bos_first)

    @property
    def longest(self):
        """Characters of the longest document of the whole corpus."""
        return self.corpus.longest

    def lengths(self):
        """(D,) tokens of each document with its two BOS, in this order, in the bounds' unsigned type (uint32 below
        2^32 tokens: half the memory of int64, 150 MB less for the 37.5 million documents of a 300 MB word list)."""
        lengths = np.diff(self.corpus.bounds)  # increasing bounds: no wrap-around
        lengths += 1
        return lengths if self.order is None else lengths[self.order]

    def length_list(self):
        """lengths() indexable as a sequence of Python ints (a memoryview: the training loop reads one per step)."""
        return memoryview(self.lengths())

    def pack(self, first, count, keep):
        """(tokens, starts): documents first .. first + count - 1 (wrapping around), each cut to its first `keep`
        tokens, back to back as int64, and the (count + 1,) index where each starts; what a list of token
        lists gives through `tokens += doc[:keep]`, without a Python object per document."""
        d = self.indices((first + np.arange(count)) % len(self))              # (count,) corpus indices
        begin = self.corpus.bounds[d].astype(np.int64)                        # (count,) each document's first BOS
        whole = self.corpus.bounds[d + 1].astype(np.int64) - begin + 1        # (count,) with both BOS
        if count and not self._inside(begin, whole, 2):
            self._find_damage(first, count)
        lengths = np.minimum(whole, keep)                                     # (count,)
        starts = np.zeros(count + 1, np.int64)                                # (count + 1,)
        np.cumsum(lengths, out=starts[1:])
        at = np.repeat(begin - starts[:-1], lengths) + np.arange(starts[-1])  # (tokens,) positions in the corpus
        tokens = self.corpus.tokens[at].astype(np.int64)
        bos = len(self.corpus.chars)  # each document's first BOS, its last if kept, none inside, no id above
        if count and (np.count_nonzero(tokens == bos) != count + np.count_nonzero(whole <= keep)
                      or tokens.max() > bos or np.any(tokens[starts[:-1]] != bos)):
            self._find_damage(first, count)
        if self.bos_first:
            tokens = (tokens + 1) % (len(self.corpus.chars) + 1)
        return tokens, starts

    def found(self, texts):
        """The strings among `texts` that are documents of this sequence, as a set, with no Python object per
        document: for each length the strings have, one pass over the documents of that length, CHUNK characters
        at a time, hashing each one's tokens (a polynomial in uint64); a hash that matches is compared token by
        token."""
        index = {ch: i for i, ch in enumerate(self.corpus.chars)}
        by_length = {}
        for text in set(texts):
            if all(ch in index for ch in text):
                by_length.setdefault(len(text), {})[tuple(index[ch] for ch in text)] = text
        found, lengths = set(), self.lengths() if by_length else None    # (D,) with both BOS
        for length, wanted in by_length.items():
            powers = np.array([pow(HASH_BASE, k, 2**64) for k in range(length)], np.uint64)     # (L,)
            keys = np.array([_hash(ids, powers) for ids in wanted], np.uint64)               # (W,)
            same_length = self.indices(np.flatnonzero(lengths == length + 2))                # corpus indices
            step = max(1, CHUNK // max(1, length))
            for first in range(0, len(same_length), step):
                starts = self.corpus.bounds[same_length[first:first + step]].astype(np.int64) + 1
                at = starts[:, None] + np.arange(length)                                     # (n, L)
                rows = np.take(self.corpus.tokens, at, mode='clip').astype(np.uint64)  # clip: a damaged cache's bounds
                for row in rows[np.isin(rows @ powers, keys)].tolist():
                    if tuple(row) in wanted:
                        found.add(wanted.pop(tuple(row)))
                        keys = np.array([_hash(ids, powers) for ids in wanted], np.uint64)
                if not wanted:
                    break
        return found

    def take(self, positions):
        """The documents at `positions` of this sequence, in that order."""
        return Documents(self.corpus, self.indices(positions), self.bos_first)

    def shuffled(self, rng: random.Random):
        """data.shuffled: random.shuffle's draws, applied to positions (8 bytes each, no object per document)."""
        return self.take(shuffled_positions(len(self), rng))

    def holdout(self, val_fraction, seed, by):
        """data.holdout_split's (train, val), as Documents."""
        check_split(val_fraction, by)
        if by == 'makemore':
            train, test = makemore_positions(len(self))
            return self.take(train), self.take(test)
        if by == 'line':
            held = np.zeros(len(self), bool)
            held[holdout_draw(seed).sample(range(len(self)), validation_size(len(self), val_fraction, by))] = True
            return self.take(np.flatnonzero(~held)), self.take(np.flatnonzero(held))
        order, first = self.string_order()
        n_units = int(np.count_nonzero(first))
        picks = holdout_draw(seed).sample(range(n_units), validation_size(n_units, val_fraction, by))
        picks = np.sort(np.asarray(picks, np.int64))                 # (V,) held units in string order
        begin, end = nth_true(first, picks), nth_true(first, picks + 1)  # each held unit's run in `order`
        train = np.ones(len(self), bool)                             # (D,)
        train[order[ranges(begin, end)]] = False                     # every document of a held unit
        return self.take(np.flatnonzero(train)), self.take(order[begin])  # one document of each held unit

    def string_order(self):
        """string_order.string_order of these documents: (order, first), the split by name's sort. It reads the first
        characters of every document, and a damaged id there would move documents between the splits silently: the
        whole token array is checked first (a pass over it, 2**24 tokens at a time)."""
        self._check_every_document()
        return string_order(self)

    def _check_every_document(self):
        """Stop (`_damaged`) unless every document of the corpus is a BOS, characters, and a BOS: the bounds rise, a
        BOS is at each of them and nowhere else, and no id is above it."""
        tokens, bounds, bos = self.corpus.tokens, self.corpus.bounds, len(self.corpus.chars)
        whole = bool(np.all(bounds[1:] > bounds[:-1]) and np.all(np.take(tokens, bounds, mode='clip') == bos))
        count = 0
        for start in range(0, len(tokens) if whole else 0, 2**24):
            piece = tokens[start:start + 2**24]
            count += int(np.count_nonzero(piece == bos))
            whole = whole and int(piece.max()) <= bos
        if not (whole and count == len(bounds)):
            self._damaged("found before the split by name")


HASH_BASE = 0x9E3779B97F4A7C15  # an odd 64-bit constant: Documents.found's rows hash as sum(id_k HASH_BASE^k)


def _hash(ids, powers):
    """The uint64 hash of a tuple of token ids, as Documents.found computes it for a row of them."""
    return int(np.array(ids, np.uint64) @ powers) if ids else 0


def file_documents(path, vocab=None, notice=None, progress=None):
    """The documents of the file at `path` (corpus.load_corpus: tokenised once into the cache, then memory-mapped),
    in the token ids of `vocab` when given (a model's: its characters must hold the file's, or a MicrogptError
    names those it lacks; the tokens are remapped in memory when the file has fewer), else in the file's own.
    `notice(words)` hears that the cache could not be written (the file was tokenised in memory); `progress` is
    load_corpus's."""
    from .corpus import Corpus, load_corpus, token_dtype
    corpus = load_corpus(path, progress=progress)
    if corpus.notice and notice:
        notice(corpus.notice)
    if vocab is None:
        return Documents(corpus)
    if corpus.chars != vocab.chars:
        known = set(vocab.chars)
        unknown = [ch for ch in corpus.chars if ch not in known]
        if unknown:
            raise MicrogptError(f"{path} holds {named_characters(unknown)}, not in the model's vocabulary; give "
                                f"data of its {len(vocab.chars)} characters: {named_characters(vocab.chars)}")
        offset, bos = 1 if vocab.bos_first else 0, len(vocab.chars)
        table = np.full(np.iinfo(corpus.tokens.dtype).max + 1, bos + 1, token_dtype(bos + 1))  # past BOS: damage
        table[:len(corpus.chars) + 1] = [i - offset for i in vocab.encode(corpus.chars)] + [bos]  # and BOS to BOS
        corpus = Corpus(vocab.chars, table[corpus.tokens], corpus.bounds, corpus.longest, cache_path=corpus.cache_path,
                        source=corpus.source, cache_inode=corpus.cache_inode)
    return Documents(corpus, bos_first=vocab.bos_first)

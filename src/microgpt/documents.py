"""The documents of a Corpus as a sequence of token lists, in a chosen order, with no Python object per document.

`Documents` stands where a list of `vocab.document_tokens(doc)` stood: `len(docs)`, `docs[i]` (the list
[BOS] + ids + [BOS]), `docs[a:b]` (a list of them), so the training loop, the engines and evaluation take
either. Shuffling and the held-out splits give the same documents in the same order as data.py's functions
on the list of strings: shuffling permutes positions with the very same draws, and the split by name ranks
distinct documents in string order (token ids follow code points, so the order of the token rows is the
order of the strings).
"""

import random

import numpy as np

from .data import Vocabulary, check_split, holdout_draw, validation_size
from .makemore_split import makemore_positions
from .permutation import shuffled_positions

RANK_ROWS = 2**20  # documents written into the sort keys at a time


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
        ids = tokens[bounds[d]:bounds[d + 1] + 1]
        if self.bos_first:  # BOS (= len(chars)) becomes 0 and every character moves up by one
            ids = (np.asarray(ids, np.int64) + 1) % (len(self.corpus.chars) + 1)
        return ids.tolist()

    _views = None  # (tokens, bounds, order) as memoryviews, made at the first document read

    def _make_views(self):
        corpus = self.corpus
        self._views = (memoryview(corpus.tokens), memoryview(corpus.bounds),
                       None if self.order is None else memoryview(self.order))
        return self._views

    def __getstate__(self):
        return {**self.__dict__, '_views': None}  # a memoryview cannot be pickled: the copy makes its own

    def text(self, i):
        """Document i as a string."""
        d, bounds, chars = int(self.indices([i])[0]), self.corpus.bounds, self.corpus.chars
        return ''.join(chars[t] for t in self.corpus.tokens[int(bounds[d]) + 1:int(bounds[d + 1])].tolist())

    def texts(self):
        """Each document as a string, in this order (one Python object each: for small uses and tests)."""
        return (self.text(i) for i in range(len(self)))

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
        lengths = np.minimum(self.corpus.bounds[d + 1].astype(np.int64) - begin + 1, keep)  # (count,)
        starts = np.zeros(count + 1, np.int64)                                # (count + 1,)
        np.cumsum(lengths, out=starts[1:])
        at = np.repeat(begin - starts[:-1], lengths) + np.arange(starts[-1])  # (tokens,) positions in the corpus
        tokens = self.corpus.tokens[at].astype(np.int64)
        if self.bos_first:
            tokens = (tokens + 1) % (len(self.corpus.chars) + 1)
        return tokens, starts

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
        ranks, n_units = self.distinct_ranks()                      # (D,) string-order rank of each document
        picks = holdout_draw(seed).sample(range(n_units), validation_size(n_units, val_fraction, by))
        held_units = np.zeros(n_units, bool)
        held_units[picks] = True
        train = np.flatnonzero(~held_units[ranks])
        one_of_unit = np.empty(n_units, np.int64)                  # a position of a document of each unit
        one_of_unit[ranks] = np.arange(len(self))
        return self.take(train), self.take(one_of_unit[np.sort(np.asarray(picks, np.int64))])

    def distinct_ranks(self):
        """((D,) rank of each document among the distinct documents in string order, their number).

        Each document becomes a sort key whose order is its string's: its ids + 1 (code-point order), padded
        with 0 to the longest document (a prefix sorts first). Short documents over a small alphabet pack into
        one uint64 (bits per id x width <= 64), which sorts fast; others compare as rows of big-endian bytes."""
        bounds = self.corpus.bounds.astype(np.int64)
        order = self.indices()
        lengths = np.diff(bounds)[order] - 1                        # (D,) characters
        width = max(1, int(lengths.max()))
        bits = int(len(self.corpus.chars) + 1).bit_length()         # ids + 1 run from 1 to len(chars)
        packed = bits * width <= 64
        if packed:
            keys = np.zeros(len(self), np.uint64)                    # (D,)
        else:
            keys = np.zeros((len(self), width), '>u2' if bits > 8 else np.uint8)  # (D, width)
        for start in range(0, len(self), RANK_ROWS):
            rows = np.arange(start, min(len(self), start + RANK_ROWS))
            n = lengths[rows]
            col = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            ids = self.corpus.tokens[np.repeat(bounds[order[rows]] + 1, n) + col].astype(np.uint64) + 1
            if packed:  # the first character in the highest bits; the fields do not overlap, so a sum is an OR
                fields = ids << (bits * (width - 1 - col)).astype(np.uint64)          # (characters,)
                keys[start:start + len(rows)] = np.add.reduceat(fields, np.cumsum(n) - n)
            else:
                keys[np.repeat(rows, n), col] = ids
        if not packed:
            keys = keys.view(np.dtype((np.void, keys.shape[1] * keys.itemsize))).ravel()  # (D,) one row each
        units, ranks = np.unique(keys, return_inverse=True)
        return ranks.ravel(), len(units)

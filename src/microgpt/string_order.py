"""The held-out split by name's sort: the documents of a Documents in the order their strings sort, with no Python
object per document (documents.py's `Documents.holdout` picks whole runs of equal strings from it).

Token ids follow code points, so sort keys built from the ids order the documents as their strings. The passes
over all the documents go CHUNK documents at a time.
"""

import numpy as np

CHUNK = 2**20  # documents at a time in the passes over all of them
TIE_CHARACTERS = 2**20  # characters of tied documents compared in one pass when they are few (about 24 MB)


def string_order(docs):
    """(order, first): the positions of this sequence sorted by their documents' strings (equal strings in
    position order), and first (D,) bool, true where order[i] begins a distinct string.

    A document's sort key packs K = 64 // bits of its characters as ids + 1 (code-point order) into one
    uint64, the first character highest, 0 past its end (a prefix sorts first). One sort by the first K
    characters orders most word lists. Only runs of equal keys that hold a longer document are sorted
    again, by their next characters, on those documents alone: K more at a time while they are many, and
    when fewer, as many as TIE_CHARACTERS in all allows (two equal lines of millions of characters)."""
    bits = max(1, len(docs.corpus.chars).bit_length())            # ids + 1 run from 1 to len(chars)
    per_key = 64 // bits
    keys = _sort_keys(docs, None, 0, per_key, bits)                # (D,)
    order = np.argsort(keys, kind='stable')                       # (D,) int64
    first = np.ones(len(docs), bool)                              # (D,)
    for start in range(0, len(docs), CHUNK):                      # keys[order[i]] != keys[order[i - 1]]
        rows = order[max(start - 1, 0):start + CHUNK]
        first[max(start, 1):start + CHUNK] = keys[rows[1:]] != keys[rows[:-1]]
    del keys
    compared = per_key                                            # characters the order has compared
    pending = _tied(docs, order, first, None, compared) if docs.longest > compared else np.zeros(0, np.int64)
    while len(pending):                                           # (n,) positions of order, whole runs
        run = np.cumsum(first[pending])                           # (n,) the run of each
        width = max(per_key, min(TIE_CHARACTERS // len(pending), docs.longest - compared))
        if width == per_key:  # their next K characters as packed keys
            more = _sort_keys(docs, order[pending], compared, per_key, bits)   # (n,) uint64
        else:  # their next `width` characters as rows of big-endian fields, which compare as the strings do
            more = _rows(docs, order[pending], compared, width, bits)         # (n,) void
        by_characters = np.argsort(more, kind='stable')           # (n,)
        resort = by_characters[np.argsort(run[by_characters], kind='stable')]  # by run, then characters
        more = more[resort]
        order[pending] = order[pending[resort]]
        first[pending[1:]] |= more[1:] != more[:-1]               # a run splits where the characters differ
        compared += width
        pending = _tied(docs, order, first, pending, compared)
    return order, first


def _tied(docs, order, first, among, compared):
    """The positions of `order` in runs of 2+ equal keys with a document of more than `compared` characters:
    those their first `compared` characters leave unordered. `among`: the positions to look at (whole runs;
    None: all of them, a chunk at a time)."""
    if among is not None:
        runs = np.cumsum(first[among]) - 1                        # (n,)
        begin, end = _extent(docs, order[among])
        tied = (np.bincount(runs) > 1) & (np.bincount(runs, weights=end - begin > compared) > 0)
        return among[tied[runs]]
    candidates = [np.zeros(0, np.int64)]  # (m,) each: longer documents in runs of 2+, a chunk at a time
    for start in range(0, len(order), CHUNK):
        rows = np.arange(start, min(len(order), start + CHUNK))   # (chunk,)
        next_first = np.append(first[start + 1:start + CHUNK + 1], True)[:len(rows)]  # (chunk,)
        begin, end = _extent(docs, order[rows])
        candidates.append(rows[(end - begin > compared) & ~(first[rows] & next_first)])
    runs = np.unique(true_count(first, np.concatenate(candidates)) - 1)  # (r,) runs holding a longer one
    return ranges(nth_true(first, runs), nth_true(first, runs + 1))


def _extent(docs, positions):
    """((n,), (n,)) int64: where the characters of the documents at `positions` begin in the corpus's
    tokens, and where they end (their closing BOS)."""
    d = docs.indices(positions)
    return docs.corpus.bounds[d].astype(np.int64) + 1, docs.corpus.bounds[d + 1].astype(np.int64)


def _fields(docs):
    """(every value of the token type,) uint64: a token's sort field, id + 1 for a character (code-point order)
    and 0 for BOS, where a document ends: a prefix sorts first. An id past BOS, which only a damaged cache holds,
    is 0 too (reading that document stops the run: documents.Documents)."""
    field = np.zeros(np.iinfo(docs.corpus.tokens.dtype).max + 1, np.uint64)
    field[:len(docs.corpus.chars)] = np.arange(1, len(docs.corpus.chars) + 1, dtype=np.uint64)
    return field


def _tokens(docs, at):
    """The tokens at positions `at`, clipped into the array (only a damaged cache's bounds point outside it)."""
    return np.take(docs.corpus.tokens, at, mode='clip')


def _rows(docs, positions, skip, width, bits):
    """(n,) void: characters skip .. skip + width - 1 of each document at `positions` as a row of big-endian
    fields of 1, 2 or 4 bytes, whichever holds `bits` (0 past its end), whose bytes compare as the strings do."""
    begin, end = _extent(docs, positions)
    at = np.minimum(begin[:, None] + skip + np.arange(width), end[:, None])  # (n, width); the end is BOS
    rows = _fields(docs)[_tokens(docs, at)].astype('>u1' if bits <= 8 else '>u2' if bits <= 16 else '>u4')
    return rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel()


def _sort_keys(docs, positions, skip, per_key, bits):
    """(n,) uint64 (n = D when positions is None): characters skip .. skip + per_key - 1 of each document as
    `bits`-wide fields, the first in the highest."""
    n = len(docs) if positions is None else len(positions)
    keys, field = np.zeros(n, np.uint64), _fields(docs)          # (n,), (len(chars) + 1,)
    for start in range(0, n, CHUNK):
        rows = np.arange(start, min(n, start + CHUNK)) if positions is None else positions[start:start + CHUNK]
        begin, end = _extent(docs, rows)
        key = np.zeros(len(rows), np.uint64)                      # (chunk,)
        for c in range(skip, skip + per_key):
            key <<= np.uint64(bits)
            key |= field[_tokens(docs, np.minimum(begin + c, end))]
        keys[start:start + len(rows)] = key
    return keys


def nth_true(mask, ranks):
    """(len(ranks),) int64: the position of the ranks-th true value of mask (from 0; ranks ascending), len(mask)
    past the last."""
    out = np.full(len(ranks), len(mask), np.int64)
    seen = done = 0
    for start in range(0, len(mask), CHUNK):
        where = np.flatnonzero(mask[start:start + CHUNK])
        stop = int(np.searchsorted(ranks, seen + len(where)))
        out[done:stop] = start + where[ranks[done:stop] - seen]
        done, seen = stop, seen + len(where)
    return out


def true_count(mask, positions):
    """(len(positions),) int64: how many of mask[:p + 1] are true, for each p of `positions` (ascending)."""
    out = np.empty(len(positions), np.int64)
    seen = 0
    for start in range(0, len(mask), CHUNK):
        chunk = mask[start:start + CHUNK]
        lo, hi = np.searchsorted(positions, (start, start + len(chunk)))
        if hi > lo:
            out[lo:hi] = seen + np.cumsum(chunk)[positions[lo:hi] - start]
        seen += int(np.count_nonzero(chunk))
    return out


def ranges(begin, end):
    """begin[0] .. end[0] - 1, begin[1] .. end[1] - 1, ... as one int64 array."""
    sizes = end - begin
    return np.repeat(begin - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))

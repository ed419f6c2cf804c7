"""A data file as one token array, memory-mapped from a cache on disk: data at any size.

The documents of data.py (stripped non-blank lines) are tokenised once, piece by piece, into

    tokens  (N,) uint8 or uint16   character ids, BOS (= len(chars)) before every document and after the last:
                                   [BOS] d0 [BOS] d1 ... [BOS]; document i with its BOS on both sides is
                                   tokens[bounds[i]:bounds[i + 1] + 1], the sequence microgpt trains on
    bounds  (D + 1,) uint32/uint64 position of each BOS

and written to the cache folder ($MICROGPT_CACHE, else $XDG_CACHE_HOME/microgpt, else ~/.cache/microgpt) as
one file: tokens, bounds, a JSON footer, its length and a magic line. The footer records the source's path,
size, modification and change times, inode and a hash of its first and last 64 KiB: a file that changed
since is tokenised again, as is a cache file that is truncated or of another version. The file is written
under a temporary name and renamed, so an interrupted tokenisation leaves nothing a later run would read.
A cache folder that cannot be written means tokenising in memory, with a notice. Pipes and devices, and
files under CACHE_MIN_BYTES (faster to tokenise than to cache), are tokenised in memory.

Documents (documents.py) read these arrays without a Python object per document.
"""

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from .data import (TEXT_HINT, cache_folder, check_alphabet, check_data_path, decode_piece, edges_sha256, read_pieces,
                   split_lines)
from .errors import MicrogptError, NotData
from .tempfiles import folder_problem, make_temporary, remove_quietly, remove_stale

CACHE_VERSION = 1
MAGIC = b'microgpt-token-cache\n'
CACHE_MIN_BYTES = 2**20
SLICE = 2**22             # ids remapped or widened at a time
STALE_TEMPORARY_S = 600   # a token cache's temporary unchanged this long is no live writer's


@dataclass
class Corpus:
    chars: str                # the vocabulary's characters, sorted; BOS is len(chars)
    tokens: np.ndarray        # (N,) character ids with BOS around every document
    bounds: np.ndarray        # (D + 1,) positions of BOS in tokens
    longest: int              # characters of the longest document
    notice: str = None        # something the user should know (the cache could not be written)
    cache_path: str = None    # the memory-mapped cache file, or None when tokenised in memory
    source: dict = field(default_factory=dict)
    cache_inode: int = None   # the cache file's inode when it was opened (another run may replace the file)

    @property
    def bos(self):
        return len(self.chars)

    def __len__(self):
        return len(self.bounds) - 1


def load_corpus(path, cache_dir=None, min_cache_bytes=CACHE_MIN_BYTES, progress=None):
    """The documents of `path` as a Corpus: memory-mapped from the cache when it is current, else tokenised
    (and cached when the file is large enough and the cache folder writable). While tokenising,
    `progress(bytes_read, total_bytes_or_None)` is called after each piece."""
    check_data_path(path)
    source = source_identity(path)
    if source is None or source['size'] < min_cache_bytes:  # a small file: read at once, with no progress to show
        return tokenise(path, _MemorySink(source))
    folder = cache_dir or cache_folder()
    cache_path = os.path.join(folder, f"tokens-{hashlib.sha256(source['path'].encode()).hexdigest()[:32]}.bin")
    cached = open_cache(cache_path, source)
    if cached is not None:
        try:  # a run ended while tokenising by a signal Python does not catch (SIGTERM, SIGHUP, kill -9) left its
            # temporary, hundreds of MB, which only tokenising swept; one written in the last 10 minutes may be
            # another machine's, in a cache folder they share
            remove_stale(folder, '.tmp-tokens-', '.bin', unchanged_s=STALE_TEMPORARY_S)
        except OSError:
            pass
        return cached
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = make_temporary(folder, '.tmp-tokens-', '.bin')
    except OSError as e:
        corpus = tokenise(path, _MemorySink(source), progress)
        corpus.notice = (f"cannot write the token cache in {folder} ({folder_problem(folder, e)}); tokenised {path} "
                         f"in memory (set MICROGPT_CACHE to a writable folder to cache it)")
        return corpus
    try:
        with os.fdopen(fd, 'w+b') as f:  # no fsync: a cache that a crash left short or zeroed fails open_cache
            tokenise(path, _FileSink(f, source), progress)
        os.replace(tmp, cache_path)
    except OSError as e:  # a full disk: tokenise in memory instead
        remove_quietly(tmp)
        corpus = tokenise(path, _MemorySink(source), progress)
        corpus.notice = f"cannot write the token cache in {folder} ({e.strerror}); tokenised {path} in memory"
        return corpus
    except BaseException:  # Ctrl-C, or an error in the data: no partial cache stays behind
        remove_quietly(tmp)
        raise
    corpus = open_cache(cache_path, source)
    if corpus is None:
        raise MicrogptError(f"{cache_path}: the token cache just written does not read back; remove it and retry")
    return corpus


def source_identity(path):
    """What must be unchanged for a cache of `path` to be current; None for pipes and devices."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, 'rb') as f:
            info = os.fstat(f.fileno())
            edges = edges_sha256(f, info.st_size)
    except OSError as e:
        raise MicrogptError(f"{path}: cannot read: {e.strerror}") from None
    return {'path': os.path.abspath(path), 'size': info.st_size, 'mtime_ns': info.st_mtime_ns,
            'ctime_ns': info.st_ctime_ns, 'inode': info.st_ino, 'device': info.st_dev, 'edges': edges}


# ---- tokenising: one pass over the pieces, provisional ids in order of first appearance, then one remap

UNSEEN = 0xFFFF
BOS_SEPARATOR = 10  # documents are joined with '\n', which no stripped document contains: it marks each BOS
ASCII_WHITESPACE = bytes(c for c in range(128) if chr(c).isspace())  # what str.strip() strips, in ASCII
EDGE_WHITESPACE = [bytes([c]) for c in ASCII_WHITESPACE if c not in b'\n\r']


def ascii_documents(piece):
    """The documents of an ASCII piece, each followed by b'\n': data.split_lines on bytes, where bytes.strip
    takes every ASCII character str.strip strips. Most pieces need only C-speed bytes methods: CRLF becomes
    LF, blank lines go, and if no whitespace touches a line's ends the lines are the documents already."""
    if b'\r' in piece:
        piece = piece.replace(b'\r\n', b'\n')
    if b'\r' not in piece:  # (a lone CR ends a line too: the general path below)
        while b'\n\n' in piece:
            piece = piece.replace(b'\n\n', b'\n')
        piece = piece.lstrip(b'\n')
        if not any(c in piece and (b'\n' + c in piece or c + b'\n' in piece or piece.startswith(c)
                                   or piece.endswith(c)) for c in EDGE_WHITESPACE):  # a memchr each, mostly
            return piece if not piece or piece.endswith(b'\n') else piece + b'\n'
    lines = piece.replace(b'\r', b'\n').split(b'\n')
    docs = list(filter(None, [line.strip(ASCII_WHITESPACE) for line in lines]))
    return b'\n'.join(docs) + b'\n' if docs else b''


def tokenise(path, sink, progress=None):
    """Tokenise the documents of `path` into `sink` and return sink.finish's Corpus; provisional id 0 is BOS,
    characters 1.. in order of first appearance, remapped at the end to the sorted vocabulary's ids."""
    provisional = np.full(0x110000, UNSEEN, np.uint16)  # code point -> provisional id
    provisional[BOS_SEPARATOR] = 0
    first_seen = []                                      # provisional id - 1 -> code point
    sink.write(np.zeros(1, np.uint8), np.zeros(1, np.uint32))  # the leading BOS
    written, longest = 1, 0
    seen, byte_ids = b'\n', None  # the ASCII characters with an id, and their ids as a bytes.translate table
    total = os.path.getsize(path) if os.path.isfile(path) else None
    for offset, piece in read_pieces(path):
        if progress:
            progress(offset + len(piece), total)
        text = ascii_documents(piece) if piece.isascii() else None
        if text is not None:
            points = np.frombuffer(text, np.uint8)  # (n,) code points, '\n' after each document
        else:  # decode_piece drops the first piece's byte-order mark
            docs = split_lines(decode_piece(path, offset, piece))
            points = np.frombuffer(''.join(doc + '\n' for doc in docs).encode('utf-32-le'), '<u4')  # (n,)
        if not len(points):
            continue
        if text is not None and byte_ids and not text.translate(None, seen):
            # every character seen before and every id a byte: bytes.translate, 8x faster than indexing
            ids = np.frombuffer(text.translate(byte_ids), np.uint8)  # (n,) BOS where '\n' was
        else:
            ids = provisional[points]                       # (n,) BOS where '\n' was
            if (ids == UNSEEN).any():                         # characters seen for the first time
                present = np.flatnonzero(np.bincount(points))
                new = present[provisional[present] == UNSEEN]
                check_alphabet(path, len(first_seen) + len(new))
                provisional[new] = np.arange(len(first_seen) + 1, len(first_seen) + 1 + len(new))
                first_seen += new.tolist()
                ids = provisional[points]
                seen = bytes([BOS_SEPARATOR] + [c for c in first_seen if c < 128])
                byte_ids = _translation(provisional[:256]) if len(first_seen) < 256 else None
            ids = ids.astype(token_dtype(len(first_seen)), copy=False)
        bos_at = np.flatnonzero(points == BOS_SEPARATOR)                           # (d,)
        bounds = written + bos_at                         # (d,) in the file's token positions
        sink.write(ids, bounds.astype(bound_dtype(written + len(ids)), copy=False))
        longest = max(longest, int(np.diff(bos_at, prepend=-1).max()) - 1)
        written += len(ids)
    if written == 1:
        raise NotData(f"{path}: no non-blank lines; {TEXT_HINT}")
    chars = ''.join(sorted(map(chr, first_seen)))
    final = np.empty(len(first_seen) + 1, token_dtype(len(chars)))  # provisional id -> final id
    final[0] = len(chars)
    rank = {ch: i for i, ch in enumerate(chars)}
    final[1:] = [rank[chr(c)] for c in first_seen]
    return sink.finish(final, written, chars, longest)


def remapped(final, ids):
    """final[ids]; bytes to bytes through bytes.translate, 8x faster than numpy's indexing."""
    if ids.dtype != np.uint8 or final.dtype != np.uint8:
        return final[ids]
    return np.frombuffer(ids.tobytes().translate(_translation(final)), np.uint8)


def _translation(values):
    """bytes.translate's table mapping byte i to values[i] (0 past the end; values of used bytes under 256)."""
    table = np.zeros(256, np.uint8)
    table[:len(values)] = values
    return table.tobytes()


def token_dtype(n_chars):
    return np.uint8 if n_chars < 256 else np.uint16


def bound_dtype(n_tokens):
    return np.uint32 if n_tokens < 2**32 else np.uint64


class _MemorySink:
    """Token ids and bounds in memory, for files not worth caching, pipes, and unwritable cache folders."""

    def __init__(self, source):
        self.source, self.pieces, self.bound_pieces = source, [], []

    def write(self, ids, bounds):
        self.pieces.append(ids)
        self.bound_pieces.append(bounds)

    def finish(self, final, total, chars, longest):
        tokens = np.empty(total, final.dtype)  # (N,)
        at = 0
        for piece in self.pieces:
            tokens[at:at + len(piece)] = remapped(final, piece)
            at += len(piece)
        self.pieces = []
        bounds = np.concatenate(self.bound_pieces).astype(bound_dtype(total))  # (D + 1,)
        return Corpus(chars, tokens, bounds, longest, source=self.source)


class _FileSink:
    """Token ids go straight to the file, as uint8 until a 256th character appears (the file is then widened
    to uint16 in place); bounds stay in memory until the end, where they follow the tokens, then the footer."""

    def __init__(self, f, source):
        self.f, self.source, self.dtype, self.count = f, source, np.uint8, 0
        self.bound_pieces = []

    def write(self, ids, bounds):
        if ids.dtype != self.dtype:
            self._widen()
        self.f.write(ids.astype(self.dtype, copy=False).tobytes())
        self.count += len(ids)
        self.bound_pieces.append(bounds)

    def _widen(self):
        """uint8 -> uint16 in place, from the end backwards, so a slice is read before it is overwritten."""
        for end in range(self.count, 0, -SLICE):
            start = max(0, end - SLICE)
            self.f.seek(start)
            ids = np.frombuffer(self.f.read(end - start), np.uint8)
            self.f.seek(2 * start)
            self.f.write(ids.astype(np.uint16).tobytes())
        self.f.seek(2 * self.count)
        self.dtype = np.uint16

    def finish(self, final, total, chars, longest):
        itemsize = np.dtype(self.dtype).itemsize
        for start in range(0, total, SLICE):  # the provisional ids -> final ids, in place
            self.f.seek(start * itemsize)
            ids = np.frombuffer(self.f.read(min(SLICE, total - start) * itemsize), self.dtype)
            self.f.seek(start * itemsize)
            self.f.write(remapped(final, ids).astype(self.dtype, copy=False).tobytes())
        self.f.seek(total * itemsize)
        self.f.write(b'\0' * (-(total * itemsize) % 8))
        bounds_at = self.f.tell()
        n_bounds = 0
        for piece in self.bound_pieces:
            self.f.write(piece.astype(bound_dtype(total)).tobytes())
            n_bounds += len(piece)
        self.bound_pieces = []
        footer = json.dumps({'version': CACHE_VERSION, 'source': self.source, 'chars': chars, 'longest': longest,
                             'token_dtype': np.dtype(self.dtype).name, 'n_tokens': total,
                             'bound_dtype': np.dtype(bound_dtype(total)).name, 'n_bounds': n_bounds,
                             'bounds_at': bounds_at}, sort_keys=True).encode('utf-8')
        self.f.write(footer + len(footer).to_bytes(8, 'little') + MAGIC)
        return None


def open_cache(cache_path, source):
    """The Corpus memory-mapped from `cache_path` if that file is complete, of this version and made from this
    very `source`; else None (and the caller tokenises again)."""
    try:
        with open(cache_path, 'rb') as f:
            info = os.fstat(f.fileno())
            size = info.st_size
            trailer = len(MAGIC) + 8
            if size < trailer:
                return None
            f.seek(size - trailer)
            end = f.read(trailer)
            footer_bytes = int.from_bytes(end[:8], 'little')
            if end[8:] != MAGIC or footer_bytes > size - trailer:
                return None
            f.seek(size - trailer - footer_bytes)
            footer = json.loads(f.read(footer_bytes))
        if not isinstance(footer, dict) or footer.get('version') != CACHE_VERSION or footer.get('source') != source:
            return None
        tokens_dtype, bounds_dtype = np.dtype(footer['token_dtype']), np.dtype(footer['bound_dtype'])
        n_tokens, n_bounds, bounds_at = footer['n_tokens'], footer['n_bounds'], footer['bounds_at']
        if bounds_at + n_bounds * bounds_dtype.itemsize != size - trailer - footer_bytes or n_bounds < 2:
            return None
        # plain ndarray views of the mapping: slicing an np.memmap makes a memmap object per slice, 2.5x slower
        tokens = np.memmap(cache_path, tokens_dtype, 'r', 0, (n_tokens,)).view(np.ndarray)          # (N,)
        bounds = np.memmap(cache_path, bounds_dtype, 'r', bounds_at, (n_bounds,)).view(np.ndarray)  # (D + 1,)
        chars, longest = footer['chars'], footer['longest']
        if not (isinstance(chars, str) and len(set(chars)) == len(chars) and type(longest) is int
                and 0 <= longest < n_tokens):  # a footer that parses, with values of the wrong kind
            return None
        if not (tokens[0] == tokens[-1] == len(chars) and bounds[0] == 0 and bounds[-1] == n_tokens - 1):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Corpus(footer['chars'], tokens, bounds, footer['longest'], cache_path=cache_path, source=source,
                  cache_inode=info.st_ino)

"""Documents and the character tokenizer. Knows nothing of models.

A document is a stripped, non-blank line of a UTF-8 text file, read as microgpt's
`[line.strip() for line in open('input.txt') if line.strip()]` reads it (universal newlines), except that
a leading UTF-8 byte-order mark is dropped rather than becoming part of the first document.

Files are read in pieces that end on a line break (read_pieces), so a read never takes more than a piece's
memory at once, Ctrl-C is seen between pieces, and a file that claims one size and streams another
(/dev/zero, a pipe) is bounded: a regular file is read up to the size it had when opened, anything else
up to MAX_STREAM_BYTES, and to a sixteenth of the available memory (a stream is tokenised in memory: 8.4 bytes
per byte were measured for lines of 3 letters). Large files go through corpus.py, which keeps them as one token
array on disk.
"""

import hashlib
import os
import random
import stat
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from importlib import resources

from . import memory
from .config import SettingError, check_settings
from .errors import MicrogptError, NotData
from .makemore_split import makemore_split

MAX_STREAM_BYTES = 2**30   # a pipe or device (no size of its own) is read up to this
MEMORY_PER_STREAM_BYTE = 16  # ... and up to the available memory over this
MAX_LINE_BYTES = 2**26     # one item per line: a 64 MiB line is not an item
READ_BYTES = 2**23         # one read: small enough to stay interruptible, large enough to be fast
BYTE_ORDER_MARK = '\ufeff'
BUNDLED_DATASET = 'names.txt'
TEXT_HINT = "give a UTF-8 text file with one item (a name, a word) per line"
MAX_CHARS = 2**16 - 2  # distinct characters: token ids are uint16 at most, BOS included (0xFFFF: unseen in corpus.py)
SHOWN_CHARACTERS = 20  # characters outside a vocabulary named in an error, at most (a file may bring thousands)


def bundled_dataset_path():
    """The US baby names list shipped inside the package (see README for provenance)."""
    return str(resources.files('microgpt') / 'datasets' / BUNDLED_DATASET)


EDGE_BYTES = 2**16  # the hashed head and tail of a file (file_identity)


def file_sha256(path):
    """The hex SHA-256 of a file's bytes, read 1 MiB at a time: what a study keeps to know its data again."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def edges_sha256(f, size):
    """The hex SHA-256 of the first and last EDGE_BYTES of the open binary file `f` of `size` bytes."""
    digest = hashlib.sha256()
    f.seek(0)
    digest.update(f.read(EDGE_BYTES))
    f.seek(max(0, size - EDGE_BYTES))
    digest.update(f.read(EDGE_BYTES))
    return digest.hexdigest()


def file_identity(path):
    """{'size', 'edges'} of a data file, without reading it all: its length and edges_sha256. A checkpoint keeps it,
    so that --resume on an edited file is refused (an edit that keeps both the length and the ends goes unseen).
    None for what is not a regular file (a pipe, a device)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, 'rb') as f:
            size = os.fstat(f.fileno()).st_size
            return {'size': size, 'edges': edges_sha256(f, size)}
    except OSError as e:
        raise MicrogptError(f"{path}: cannot read: {e.strerror}") from None


def cache_folder():
    """Where tokenised files (corpus.py) and downloads (fetch.py) are kept: $MICROGPT_CACHE, else
    $XDG_CACHE_HOME/microgpt, else ~/.cache/microgpt."""
    if os.environ.get('MICROGPT_CACHE'):  # '~/cache' from a .env file, which no shell expanded: the home folder's
        return os.path.expanduser(os.environ['MICROGPT_CACHE'])
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'microgpt')


def redacted(address):
    """`address` for a message: a web address's user name and password, if any, shown as ***."""
    scheme, sep, rest = address.partition('://')
    end = min([i for i in map(rest.find, '/?#') if i >= 0] + [len(rest)])
    if not sep or '@' not in rest[:end]:
        return address
    return f"{scheme}://***@{rest[:end].rsplit('@', 1)[1]}{rest[end:]}"


def check_data_path(path):
    """Refuse a missing path or a folder, before anything is read."""
    if not path:
        raise MicrogptError(f"no data file given; {TEXT_HINT}")
    if not os.path.exists(path):
        scheme = path.split('://', 1)[0] if '://' in path else None
        if scheme in ('http', 'https'):  # the commands fetch these first (fetch.local_path): here, a caller did not
            raise MicrogptError(f"{redacted(path)}: is a web address; download the file and give its path")
        if scheme and scheme.isalpha():  # file://, ftp://: only http(s) is fetched (fetch.py)
            raise MicrogptError(f"{redacted(path)}: only http:// and https:// addresses are downloaded; give the "
                                f"file's local path, or its http(s) address")
        raise MicrogptError(f"{path}: no such file; {TEXT_HINT}")
    if os.path.isdir(path):
        raise MicrogptError(f"{path}: is a directory; {TEXT_HINT}")


def read_pieces(path):
    """Yield (offset, bytes) pieces of the file that end just after a line break (the last one may not),
    refusing binary data (NUL bytes) and runaway inputs with a MicrogptError."""
    check_data_path(path)
    try:
        with open(path, 'rb') as f:
            info = os.fstat(f.fileno())
            regular = stat.S_ISREG(info.st_mode) and info.st_size > 0  # /proc files and devices claim size 0
            stream_limit = min(MAX_STREAM_BYTES, memory.available_bytes() // MEMORY_PER_STREAM_BYTE)
            limit = info.st_size if regular else stream_limit
            offset, carry = 0, b''
            while True:
                block = f.read(min(READ_BYTES, limit - offset - len(carry)) if regular else READ_BYTES)
                if not block:
                    break
                encoding = _marked_encoding(block) if offset == 0 and not carry else None
                if encoding:
                    raise NotData(f"{path}: {encoding} text (it starts with {encoding}'s byte-order mark); save it as "
                                  f"UTF-8 (iconv -f {encoding} -t UTF-8); {TEXT_HINT}")
                if b'\x00' in block:
                    at = offset + len(carry) + block.index(b'\x00')
                    raise NotData(f"{path}: not a text file (a NUL byte at offset {at}); {TEXT_HINT}")
                searched = len(carry)  # the carry holds no line break: a line that ends here starts it
                carry += block
                cut = max(carry.rfind(b'\n'), carry.rfind(b'\r')) + 1
                if cut:
                    first = min(i for i in (carry.find(b'\n', searched), carry.find(b'\r', searched)) if i >= 0)
                    if first > MAX_LINE_BYTES:
                        raise NotData(f"{path}: a line of more than {MAX_LINE_BYTES:,} bytes at offset {offset}; "
                                      f"{TEXT_HINT}")
                    yield offset, carry[:cut]
                    offset, carry = offset + cut, carry[cut:]
                if len(carry) > MAX_LINE_BYTES:  # a line still unfinished
                    raise NotData(f"{path}: a line of more than {MAX_LINE_BYTES:,} bytes at offset {offset}; "
                                  f"{TEXT_HINT}")
                if not regular and offset + len(carry) >= stream_limit and f.read(1):
                    raise MicrogptError(f"{path}: a stream of more than {stream_limit:,} bytes; save it into "
                                        f"a file first (files of any size are read)")
                if regular and offset + len(carry) >= limit:
                    break
            if carry:
                yield offset, carry
    except OSError as e:
        raise MicrogptError(f"{path}: cannot read: {e.strerror}") from None


def decode_piece(path, offset, piece):
    """The text of a piece of read_pieces; the first piece loses its byte-order mark."""
    try:
        text = piece.decode('utf-8')
    except UnicodeDecodeError as e:
        raise NotData(f"{path}: not UTF-8 text (invalid byte at offset {offset + e.start}); {TEXT_HINT}") from None
    return text.removeprefix(BYTE_ORDER_MARK) if offset == 0 else text


def _marked_encoding(start):
    """'UTF-32' or 'UTF-16' where the bytes `start` with its byte-order mark (UTF-32's little-endian one begins with
    UTF-16's), else None."""
    if start[:4] in (b'\xff\xfe\x00\x00', b'\x00\x00\xfe\xff'):
        return 'UTF-32'
    return 'UTF-16' if start[:2] in (b'\xff\xfe', b'\xfe\xff') else None


def check_text(path):
    """Raise NotData where load_documents or corpus.load_corpus would, reading `path` a piece at a time and keeping
    nothing but its characters."""
    blank, bound = True, set(map(chr, range(128)))  # every ASCII character, then the others seen
    for offset, piece in read_pieces(path):
        text = decode_piece(path, offset, piece)
        blank = blank and not text.strip()
        if not piece.isascii():
            bound.update(text)
    if blank:
        raise NotData(f"{path}: no non-blank lines; {TEXT_HINT}")
    if len(bound) > MAX_CHARS:  # near the limit: the documents' own characters, read again
        characters = set()
        for offset, piece in read_pieces(path):
            characters.update(*split_lines(decode_piece(path, offset, piece)))
        check_alphabet(path, len(characters))


def check_alphabet(path, distinct):
    """NotData where the documents' `distinct` characters are over MAX_CHARS: every engine and command refuses such a
    file alike (corpus.load_corpus, load_documents, a download's check_text). Those two count a bound first, every
    ASCII character and each one of the text's (line ends and stripped spaces too), and the documents' own only
    over the limit: a set of each document's characters cost a large file 20 times its reading."""
    if distinct > MAX_CHARS:
        raise NotData(f"{path}: more than {MAX_CHARS} distinct characters; a character-level model needs a smaller "
                      f"alphabet; {TEXT_HINT}")


def load_documents(path):
    """Return the documents of the text file at `path` as strings, raising MicrogptError for anything
    unusable. For large files, corpus.load_corpus keeps them as a token array instead."""
    docs, bound = [], set(map(chr, range(128)))  # as check_text's
    for offset, piece in read_pieces(path):
        text = decode_piece(path, offset, piece)
        docs += split_lines(text)
        if not piece.isascii():
            bound.update(text)
    if not docs:
        raise NotData(f"{path}: no non-blank lines; {TEXT_HINT}")
    if len(bound) > MAX_CHARS:
        check_alphabet(path, len(set().union(*docs)))
    return docs


def split_documents(text):
    """Stripped non-blank lines, with CRLF and CR treated as line ends like Python's text mode does."""
    return split_lines(text.removeprefix(BYTE_ORDER_MARK))  # a byte-order mark is an encoding artefact


def split_lines(text):
    lines = text.replace('\r\n', '\n').replace('\r', '\n').split('\n')
    return [line.strip() for line in lines if line.strip()]


def named_characters(characters):
    """The first SHOWN_CHARACTERS of `characters`, for an error: 'a', 'b' and 3 more."""
    more = len(characters) - SHOWN_CHARACTERS
    shown = [repr(ch) if ch.isprintable() and not unicodedata.combining(ch) else ascii(ch)  # a bare accent: '\u0301'
             for ch in characters[:SHOWN_CHARACTERS]]
    return ', '.join(shown) + (f" and {more} more" if more > 0 else '')


@dataclass(frozen=True)
class Vocabulary:
    """Characters <-> token ids, plus one BOS token that both starts and ends every document.

    microgpt puts BOS last (id = number of characters); the ESP32 port puts it first (id 0).
    """
    chars: str
    bos_first: bool = False

    def __post_init__(self):
        check_settings(self)
        repeated = sorted(ch for ch, count in Counter(self.chars).items() if count > 1)
        if repeated:
            raise SettingError(lambda name: f"{name('chars')} holds {', '.join(map(repr, repeated))} more than "
                                            f"once; a vocabulary has each character once")

    @classmethod
    def from_documents(cls, docs, bos_first=False):
        return cls(''.join(sorted(set(''.join(docs)))), bos_first)

    @property
    def size(self):
        return len(self.chars) + 1

    @property
    def bos_id(self):
        return 0 if self.bos_first else len(self.chars)

    def encode(self, text):
        """Token ids of `text` (no BOS), raising MicrogptError naming any character outside the vocabulary."""
        index = self.index
        unknown = sorted({ch for ch in text if ch not in index})
        if unknown:
            raise MicrogptError(f"{named_characters(unknown)} not in the model's vocabulary; use only these "
                                f"characters: {self.chars!r}")
        return [index[ch] for ch in text]

    def decode(self, ids):
        """Text of token ids; BOS marks document boundaries and has no character, so it is skipped."""
        ids = list(ids)
        outside = [i for i in ids if not 0 <= i < self.size]
        if outside:  # a negative id would index the characters from their end
            raise ValueError(f"token id {outside[0]!r} is outside the vocabulary's 0 to {self.size - 1}")
        offset = 1 if self.bos_first else 0
        return ''.join(self.chars[i - offset] for i in ids if i != self.bos_id)

    def document_tokens(self, doc):
        """[BOS] + doc + [BOS], the sequence microgpt trains on."""
        return [self.bos_id] + self.encode(doc) + [self.bos_id]

    @cached_property
    def index(self):
        """Character -> token id."""
        offset = 1 if self.bos_first else 0
        return {ch: i + offset for i, ch in enumerate(self.chars)}


def shuffled(docs, rng: random.Random):
    """A shuffled copy, drawing from rng exactly as microgpt's `random.shuffle(docs)` does."""
    if not isinstance(docs, (list, tuple)):  # a documents.Documents: the same permutation, of indices
        return docs.shuffled(rng)
    docs = list(docs)
    rng.shuffle(docs)
    return docs


VAL_SPLITS = ('name', 'line', 'makemore')


def holdout_split(docs, val_fraction=None, seed=42, by='name'):
    """(train_docs, val_docs): by 'name', split by distinct document so no name is on both sides; by 'line',
    makemore's split of random lines, so a name on several lines can be on both sides (names.txt has 2,539
    such repeats), which scores lower than by name; by 'makemore', makemore's own test set (makemore_split),
    which fixes its size and seed. Use 'line' and 'makemore' only to compare with makemore's figures.

    val_fraction None means makemore's choice: min(1000, 10%) of the distinct documents (of the lines, by
    line). The draw uses its own random stream, so the training stream (shuffle, init, sampling) stays
    microgpt's.
    """
    if not isinstance(docs, (list, tuple)):  # a documents.Documents over a token array: the same split, by index
        return docs.holdout(val_fraction, seed, by)
    check_split(val_fraction, by)
    if by == 'makemore':
        return makemore_split(docs)
    units = sorted(set(docs)) if by == 'name' else docs
    n_val = validation_size(len(units), val_fraction, by)
    draw = holdout_draw(seed)
    if by == 'line':
        held_lines = set(draw.sample(range(len(docs)), n_val))
        return ([d for i, d in enumerate(docs) if i not in held_lines],
                [d for i, d in enumerate(docs) if i in held_lines])
    held_out = set(draw.sample(units, n_val))
    return [d for d in docs if d not in held_out], sorted(held_out)


def check_split(val_fraction, by):
    if by not in VAL_SPLITS:
        raise MicrogptError(f"unknown validation split {by!r}; choose one of: {', '.join(VAL_SPLITS)}")
    if by == 'makemore' and val_fraction is not None:
        raise MicrogptError("--val-split makemore holds out makemore's own test set; leave out --val-fraction")


def validation_size(n_units, val_fraction, by):
    """How many of `n_units` (distinct documents by name, lines by line) are held out."""
    what = 'distinct document' if by == 'name' else 'line'
    what, are = (what, 'is') if n_units == 1 else (what + 's', 'are')
    if val_fraction is None:
        n_val = min(1000, n_units // 10)
    elif not 0 < val_fraction < 1:
        raise MicrogptError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    else:
        n_val = round(n_units * val_fraction)
    if n_val == 0 and val_fraction is None:
        raise MicrogptError(f"the validation split is empty: {n_units} {what} {are} too few to hold out a tenth of "
                            f"them; give at least 10")
    if n_val == 0:
        raise MicrogptError(f"the validation split is empty: --val-fraction {val_fraction:g} of {n_units} {what} "
                            f"holds out none; give a larger --val-fraction")
    if n_val >= n_units:
        raise MicrogptError(f"the validation split would take all {n_units} {what}; "
                            f"give a smaller --val-fraction")
    return n_val


def holdout_draw(seed):
    """The held-out split's own stream: sample() picks depend only on the population's length, so a draw
    over range(n) picks the same positions as one over n sorted documents."""
    return random.Random(f'holdout:{seed}')


class _ListLengths:
    """The lengths of a list of token lists, each read when asked for (a run reads few of a large list's)."""

    def __init__(self, doc_tokens):
        self.doc_tokens = doc_tokens

    def __len__(self):
        return len(self.doc_tokens)

    def __getitem__(self, i):  # an index, or a slice (a list of lengths)
        return [len(doc) for doc in self.doc_tokens[i]] if isinstance(i, slice) else len(self.doc_tokens[i])


def document_lengths(doc_tokens):
    """The number of tokens (BOS included) of each document, indexable as Python ints: of a documents.Documents
    (read without a Python object per document), or of a sequence of token lists."""
    if hasattr(doc_tokens, 'length_list'):
        return doc_tokens.length_list()
    return _ListLengths(doc_tokens)


def batch_for_step(doc_tokens, step, batch_size):
    """The token sequences of 0-based `step`: documents step*B ... step*B + B - 1, wrapping around."""
    return batches_for_steps(doc_tokens, step, step + 1, batch_size)[0]


def batches_for_steps(doc_tokens, start, stop, batch_size):
    """batch_for_step of each step start .. stop - 1, read in one pass (a chunk of the training loop)."""
    n = len(doc_tokens)
    if n == 0:
        raise ValueError("no documents to train on")
    docs = [doc_tokens[d % n] for d in range(start * batch_size, stop * batch_size)]
    return [docs[i:i + batch_size] for i in range(0, len(docs), batch_size)]

"""Documents and the character tokenizer. Knows nothing of models.

A document is a stripped, non-blank line of a UTF-8 text file, read as microgpt's
`[line.strip() for line in open('input.txt') if line.strip()]` reads it (universal newlines), except that
a leading UTF-8 byte-order mark is dropped rather than becoming part of the first document.
"""

import os
import random
from dataclasses import dataclass
from functools import cached_property
from importlib import resources

from .errors import MicrogptError
from .makemore_split import makemore_split

MAX_FILE_BYTES = 256 * 2**20  # a list of short items this large is a mistake, and would not fit a char-level model's budget
BUNDLED_DATASET = 'names.txt'


def bundled_dataset_path():
    """The US baby names list shipped inside the package (see README for provenance)."""
    return str(resources.files('microgpt') / 'datasets' / BUNDLED_DATASET)


def load_documents(path):
    """Return the documents of the text file at `path`, raising MicrogptError for anything unusable."""
    hint = "give a UTF-8 text file with one item (a name, a word) per line"
    if not path:
        raise MicrogptError(f"no data file given; {hint}")
    if not os.path.exists(path):
        raise MicrogptError(f"{path}: no such file; {hint}")
    if os.path.isdir(path):
        raise MicrogptError(f"{path}: is a directory; {hint}")
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise MicrogptError(f"{path}: {size / 2**20:.0f} MiB is larger than the {MAX_FILE_BYTES // 2**20} MiB "
                                f"this tool reads; {hint}, or split the file")
        with open(path, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise MicrogptError(f"{path}: cannot read: {e.strerror}") from None
    if b'\x00' in raw:
        raise MicrogptError(f"{path}: looks like a binary file (it contains NUL bytes); {hint}")
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as e:
        raise MicrogptError(f"{path}: not UTF-8 text (invalid byte at offset {e.start}); {hint}") from None
    docs = split_documents(text)
    if not docs:
        raise MicrogptError(f"{path}: no non-blank lines; {hint}")
    return docs


def split_documents(text):
    """Stripped non-blank lines, with CRLF and CR treated as line ends like Python's text mode does."""
    text = text.removeprefix('\ufeff')  # a byte-order mark is an encoding artefact, not a character of the first item
    lines = text.replace('\r\n', '\n').replace('\r', '\n').split('\n')
    return [line.strip() for line in lines if line.strip()]


@dataclass(frozen=True)
class Vocabulary:
    """Characters <-> token ids, plus one BOS token that both starts and ends every document.

    microgpt puts BOS last (id = number of characters); the ESP32 port puts it first (id 0).
    """
    chars: str
    bos_first: bool = False

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
            shown = ', '.join(repr(ch) for ch in unknown)
            raise MicrogptError(f"{shown} not in the model's vocabulary; use only these characters: {self.chars!r}")
        return [index[ch] for ch in text]

    def decode(self, ids):
        """Text of token ids; BOS marks document boundaries and has no character, so it is skipped."""
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
    if by not in VAL_SPLITS:
        raise MicrogptError(f"unknown validation split {by!r}; choose one of: {', '.join(VAL_SPLITS)}")
    if by == 'makemore':
        if val_fraction is not None:
            raise MicrogptError("--val-split makemore holds out makemore's own test set; leave out --val-fraction")
        return makemore_split(docs)
    units = sorted(set(docs)) if by == 'name' else docs
    what = 'distinct documents' if by == 'name' else 'lines'
    if val_fraction is None:
        n_val = min(1000, len(units) // 10)
    elif not 0 < val_fraction < 1:
        raise MicrogptError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    else:
        n_val = round(len(units) * val_fraction)
    if n_val == 0:
        raise MicrogptError(f"the validation split is empty: {len(units)} {what} are too few to "
                            f"hold some out; give more data or a larger --val-fraction")
    if n_val >= len(units):
        raise MicrogptError(f"the validation split would take all {len(units)} {what}; "
                            f"give a smaller --val-fraction")
    draw = random.Random(f'holdout:{seed}')
    if by == 'line':
        held_lines = set(draw.sample(range(len(docs)), n_val))
        return ([d for i, d in enumerate(docs) if i not in held_lines],
                [d for i, d in enumerate(docs) if i in held_lines])
    held_out = set(draw.sample(units, n_val))
    return [d for d in docs if d not in held_out], sorted(held_out)


def batch_for_step(doc_tokens, step, batch_size):
    """The token sequences of 0-based `step`: documents step*B ... step*B + B - 1, wrapping around."""
    n = len(doc_tokens)
    start = step * batch_size
    return [doc_tokens[(start + b) % n] for b in range(batch_size)]

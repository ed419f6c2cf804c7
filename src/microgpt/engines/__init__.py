"""The engine contract and the registry of engines.

An engine owns one model's parameters and Adam state and computes with them. Every engine honours
`Engine` below; the training loop, evaluation, checkpoints and sampling use nothing else, so they never
ask which engine they hold. Each engine is imported only when asked for, so `--engine reference` never
loads NumPy.

A batch is a list of token sequences (lists of ints); each document predicts its tokens 1..n from
0..n-1 with n = min(block_size, len - 1), and a batch's loss is the mean negative log-likelihood over
every predicted token of every document.
"""

import os
from dataclasses import dataclass
from numbers import Integral
from typing import Protocol, Sequence

from ..config import num_parameters, parameter_table
from ..data import batches_for_steps
from ..errors import MicrogptError

ENGINES = ('numpy', 'fused', 'reference', 'torch')
DEFAULT_ENGINE = 'numpy'
BENCH_ENGINES = ENGINES
DTYPES = ('float64', 'float32', 'bfloat16')  # bfloat16: autocast, in the torch engine on a CUDA GPU
DEVICES = ('auto', 'cpu', 'cuda', 'mps')     # the torch engine's; auto: cuda, else mps, else cpu


@dataclass
class EngineState:
    """What a checkpoint saves and `load_state` restores: the whole state that the next step depends on."""
    weights: dict        # name -> (rows, cols) array-like, in the parameter table's order
    adam_m: Sequence     # (P,) Adam first moments, flat in the parameter table's order
    adam_v: Sequence     # (P,) Adam second moments
    adam_steps: int      # Adam updates applied so far (its bias correction and the dropout masks use it)


class Decoder(Protocol):
    def reset(self) -> None:
        """Empty the KV cache before a new sample."""

    def step(self, token_id: int, pos_id: int) -> list:
        """Feed one token at one position; return the next token's logits as floats (V,)."""


class Engine(Protocol):
    name: str            # 'reference', 'numpy', 'fused', 'torch'
    cfg: object          # its ModelConfig
    dtype: str           # 'float64' or 'float32'
    chunk_steps: int     # steps per train_steps call that keep Ctrl-C and progress responsive
    is_main_process: bool  # False in every process of a data-parallel run (torchrun) but the first: they only train

    def any_process(self, flag: bool) -> bool:
        """Whether `flag` holds in any process of a data-parallel run (a stop request), so that every process stops
        after the same step; `flag` itself in one process. Every process calls it at the same steps."""

    def num_params(self) -> int:
        """P, the number of parameters (config.num_parameters of cfg)."""

    def loss(self, batch) -> float:
        """The batch's loss, forward only (evaluation): no gradients are computed or changed."""

    def loss_and_grads(self, batch, dropout=0.0, seed_and_step=None) -> float:
        """The batch's loss; leaves d loss / d parameters for `gradients`. With `dropout`, under the masks of
        (seed, step) (dropout.py), which must then be given."""

    def train_step(self, batch, lr_t: float, tcfg) -> float:
        """One optimiser step (Adam at learning rate lr_t, with tcfg's decay, clipping and dropout) on the batch;
        returns the loss before the update."""

    def train_steps(self, doc_tokens, start: int, stop: int, tcfg, lrs) -> list:
        """Steps start .. stop - 1 of a run over `doc_tokens` (step s takes documents s*B .. s*B + B - 1,
        wrapping around; see data.batch_for_step) with learning rates `lrs`; returns their losses.
        The same numbers as one train_step per step."""

    def decoder(self) -> Decoder:
        """A decoder over the current weights, for sampling one token at a time."""

    def weights(self) -> dict:
        """Name -> a copy of each parameter, (rows, cols)."""

    def gradients(self) -> dict:
        """Name -> a copy of the gradient left by the last loss_and_grads, (rows, cols)."""

    def state(self) -> EngineState:
        """Weights and Adam state, for a checkpoint."""

    def load_state(self, state: EngineState) -> None:
        """Restore `state` (weights; Adam moments and steps when given) into this engine."""


class OneProcess:
    """The data-parallel part of the contract for the engines that run in one process."""
    is_main_process = True

    def any_process(self, flag):
        return bool(flag)


def torchrun_rank(environ=os.environ):
    """This process's RANK when it is one of several started by torchrun (or another `env://` launcher: WORLD_SIZE
    over 1 and RANK set), else None; a WORLD_SIZE or RANK that is not a whole number is refused."""
    for name in ('WORLD_SIZE', 'RANK'):  # RANK is read only in a world of several
        value = environ.get(name)
        if value is None or name == 'WORLD_SIZE' and value.strip().isdecimal() and int(value) <= 1:
            return None
        if not value.strip().isdecimal():
            raise MicrogptError(f"{name}={value!r} in the environment: torchrun sets it to a whole number, so this "
                                f"process was not started by torchrun; unset {name}")
    return int(environ['RANK'])


def make_engine(name, cfg, rng, dtype='float64', device='auto'):
    """A freshly initialised engine; its parameters are drawn from `rng` in the parameter table's order.
    `device` is the torch engine's; the others compute on the CPU (RunConfig refuses a --device for them)."""
    if dtype not in DTYPES:
        raise MicrogptError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if name == 'torch':
        from importlib.util import find_spec
        if find_spec('torch') is None:
            raise MicrogptError('the torch engine needs PyTorch, which is not installed: '
                                'pip install ".[torch]" in microgpt\'s folder')
        from .torch.engine import TorchEngine
        return TorchEngine(cfg, rng, dtype, device)
    if torchrun_rank() is not None:
        raise MicrogptError(f"this is one of several processes started by torchrun, which trains with the torch "
                            f"engine only: add --engine torch (the {name} engine runs in one process)")
    if dtype == 'bfloat16':
        raise MicrogptError(f"--dtype bfloat16 is autocast in the torch engine on a CUDA GPU; the {name} engine "
                            f"computes in float64 or float32")
    if name == 'reference':
        if dtype != 'float64':
            raise MicrogptError("the reference engine computes in Python floats (float64) only; "
                                "use --engine numpy for --dtype float32")
        from .reference.gpt import ReferenceEngine
        return ReferenceEngine(cfg, rng)
    if name == 'numpy':
        from .numpy.engine import NumpyEngine
        return NumpyEngine(cfg, rng, dtype)
    if name == 'fused':
        from .fused.engine import FusedEngine
        return FusedEngine(cfg, rng, dtype)
    raise MicrogptError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")


def run_steps(engine, doc_tokens, start, stop, tcfg, lrs):
    """`train_steps` as a plain loop of `train_step`, for engines with nothing to compile."""
    return [engine.train_step(batch, lr, tcfg)
            for batch, lr in zip(documents_batches(doc_tokens, start, stop, tcfg.batch_size), lrs)]


class DocumentsBatch(list):
    """A batch read from a documents.Documents, whose reading checks each document (a BOS at each end and none
    inside, no id above it): check_batch takes it as it is (checking every token again took 1.1-2.5 us of a
    numpy-engine step of the default job, about 240 us, on the loaded Zen 3). A slice of it is one too (the torch
    engine's share of a data-parallel batch)."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return DocumentsBatch(item) if isinstance(i, slice) else item


def documents_batches(doc_tokens, start, stop, batch_size):
    """data.batches_for_steps, each batch a DocumentsBatch where `doc_tokens` is a documents.Documents (known by its
    length_list: this module imports no NumPy, which documents.py does)."""
    batches = batches_for_steps(doc_tokens, start, stop, batch_size)
    return [DocumentsBatch(batch) for batch in batches] if hasattr(doc_tokens, 'length_list') else batches


def _is_integer(value):
    return type(value) is int or isinstance(value, Integral) and not isinstance(value, bool)


def _is_index(value, bound):
    """Whether `value` is an integer from 0 to bound - 1."""
    return _is_integer(value) and 0 <= value < bound


def check_batch(batch, vocab_size):
    """`batch` itself, or ValueError where a document holds anything but token ids 0 .. vocab_size - 1: every engine
    refuses such a batch alike (an id past the vocabulary would read another row, or wrap around, in some engines,
    and a float would be cut to an integer). A DocumentsBatch was checked as it was read."""
    if type(batch) is DocumentsBatch:
        return batch
    for d, tokens in enumerate(batch):
        for token in tokens:
            if not _is_index(token, vocab_size):
                raise ValueError(f"document {d} of the batch holds {token!r}, not a token id from 0 to "
                                 f"{vocab_size - 1}")
    return batch


def check_decoder_step(token_id, pos_id, cfg):
    """ValueError unless a decoder can take `token_id` at `pos_id` (ids within the vocabulary and the block)."""
    if not (_is_index(token_id, cfg.vocab_size) and _is_index(pos_id, cfg.block_size)):
        raise ValueError(f"token {token_id!r} at position {pos_id!r} is outside the vocabulary or the block")


def check_state(state, cfg):
    """MicrogptError unless `state` (an EngineState) fits a model of `cfg`: every parameter of its table with its
    shape, Adam's moments one per parameter, and a step count; `load_state` checks it before changing anything."""
    want = {p.name: p.shape for p in parameter_table(cfg)}
    if set(state.weights) != set(want):
        missing, extra = sorted(set(want) - set(state.weights)), sorted(set(state.weights) - set(want))
        raise MicrogptError(f"the state does not fit this model: "
                            + '; '.join(([f"it lacks {', '.join(missing)}"] if missing else [])
                                        + ([f"it has no place for {', '.join(extra)}"] if extra else [])))
    for name, shape in want.items():
        got = _shape(state.weights[name])
        if got != shape:
            raise MicrogptError(f"the state does not fit this model: {name} is {got}, the model's is {shape}")
    P = num_parameters(cfg)
    for what, moments in (('adam_m', state.adam_m), ('adam_v', state.adam_v)):
        if moments is not None and len(moments) != P:
            raise MicrogptError(f"the state does not fit this model: {what} holds {len(moments)} values for its "
                                f"{P} parameters")
    if not (_is_integer(state.adam_steps) and state.adam_steps >= 0):
        raise MicrogptError(f"the state does not fit this model: adam_steps must be a count of steps, got "
                            f"{state.adam_steps!r}")


def _shape(rows):
    """(rows, columns) of an array, a tensor or a list of lists (None for columns of differing lengths)."""
    shape = getattr(rows, 'shape', None)
    if shape is not None:
        return tuple(shape)
    widths = {len(row) for row in rows}
    return len(rows), (widths.pop() if len(widths) == 1 else None)

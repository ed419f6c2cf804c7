"""Checkpoints as safetensors: the weights under their model names, the Adam state, and JSON metadata.

Metadata (all strict JSON strings: a non-finite number is written null): format, format_version,
model_config, train_config, vocab, step, adam_steps, metrics, dtype, engine, tensors_sha256, plus what the
trainer adds (data_path, eval_every, ...). The file loads with plain `safetensors.numpy.load_file` or
`safetensors.torch.load_file`.

The same state gives the same bytes: we write the safetensors layout ourselves (8-byte header length, JSON
header with sorted keys, then the tensors back to back in the parameter table's order), because the
safetensors library writes its metadata in a random order. `tensors_sha256` is the SHA-256 of the tensor
bytes, checked on loading (format version 2; version 1 files have none and load unchecked).

Writes are atomic: a temporary `.tmp-PID-*.safetensors` in the same folder, fsync, rename, fsync of the
folder; a crash leaves the old file, and the next save into that folder removes the temporaries of saves
whose process is gone. A failed write (full disk, read-only folder) is a MicrogptError naming the path.
"""

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from ..config import ModelConfig, TrainConfig, parameter_shapes
from ..data import Vocabulary
from ..engines import EngineState
from ..errors import MicrogptError
from ..tempfiles import make_temporary, remove_quietly

FORMAT = 'microgpt-checkpoint'
FORMAT_VERSION = 2
READABLE_VERSIONS = ('1', '2')  # 1: no tensors_sha256
TEMPORARY_PREFIX = '.tmp-'
SAFETENSORS_DTYPES = {'float32': 'F32', 'float64': 'F64'}


@dataclass
class Checkpoint:
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    vocab: Vocabulary
    weights: dict            # name -> (rows, cols) array
    adam_m: np.ndarray       # (P,) or None
    adam_v: np.ndarray       # (P,) or None
    adam_steps: int
    step: int
    metrics: dict
    meta: dict               # every metadata entry, JSON-decoded


def save_checkpoint(path, engine, vocab, tcfg, step, metrics, extra_meta=None):
    """Write the engine's weights and Adam state with this metadata to `path`, atomically. `extra_meta` maps
    names to JSON strings."""
    dtype = engine.dtype
    state = engine.state()
    tensors = {name: np.asarray(w, dtype=dtype) for name, w in state.weights.items()}
    tensors['adam.m'] = np.asarray(state.adam_m, dtype=dtype)
    tensors['adam.v'] = np.asarray(state.adam_v, dtype=dtype)
    meta = {
        'format': FORMAT, 'format_version': str(FORMAT_VERSION),
        'model_config': json.dumps(engine.cfg.to_dict()), 'train_config': json.dumps(asdict(tcfg)),
        'vocab': json.dumps({'chars': vocab.chars, 'bos_first': vocab.bos_first}),
        'step': str(step), 'adam_steps': str(state.adam_steps), 'metrics': json.dumps(metrics),
        'dtype': json.dumps(dtype), 'engine': json.dumps(engine.name),
        **(extra_meta or {}),
    }
    meta = {k: (v if k in ('format', 'format_version') else _strict_json(v)) for k, v in meta.items()}
    _atomic_write(path, safetensors_bytes(tensors, meta))


def _strict_json(text):
    """`text` re-encoded as strict JSON: NaN and infinities (which json.dumps writes as bare words that are
    not JSON) become null."""
    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value
    return json.dumps(finite(json.loads(text)), allow_nan=False, ensure_ascii=False)


def safetensors_bytes(tensors, meta):
    """The safetensors file of `tensors` (name -> array, in this order) with `meta` and its tensors_sha256;
    the same input gives the same bytes."""
    header, offset, chunks = {}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder('<'), copy=False).tobytes()
        header[name] = {'dtype': SAFETENSORS_DTYPES[array.dtype.name], 'shape': list(array.shape),
                        'data_offsets': [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    payload = b''.join(chunks)
    header['__metadata__'] = {**meta, 'tensors_sha256': json.dumps(hashlib.sha256(payload).hexdigest())}
    encoded = json.dumps(header, sort_keys=True, separators=(',', ':'), ensure_ascii=False).encode('utf-8')
    encoded += b' ' * (-len(encoded) % 8)  # safetensors pads the header with spaces to 8-byte alignment
    return len(encoded).to_bytes(8, 'little') + encoded + payload


def _atomic_write(path, payload):
    folder = os.path.dirname(os.path.abspath(path))
    reason = "free some space or give another --out; the checkpoints already there are kept"
    try:
        fd, tmp = make_temporary(folder, TEMPORARY_PREFIX, '.safetensors')
    except OSError as e:
        raise MicrogptError(f"{path}: cannot write the checkpoint there ({e.strerror}); give another --out") from None
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        remove_quietly(tmp)
        raise MicrogptError(f"{path}: cannot write the checkpoint ({e.strerror}); {reason}") from None
    except BaseException:  # Ctrl-C in the middle of the write: no partial file stays behind
        remove_quietly(tmp)
        raise


def load_checkpoint(path):
    """Read and check a checkpoint; every problem is a MicrogptError saying what to do."""
    from safetensors import SafetensorError, safe_open
    hint = "give a model.safetensors written by `microgpt train --out DIR`"
    if not os.path.exists(path):
        raise MicrogptError(f"{path}: no such checkpoint; {hint}")
    if os.path.isdir(path):
        raise MicrogptError(f"{path}: is a directory; {hint} (e.g. {os.path.join(path, 'model.safetensors')})")
    try:
        with safe_open(path, framework='numpy') as f:
            raw_meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, Exception) as e:  # safetensors raises several types
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MicrogptError(f"{path}: not a readable safetensors file, truncated or corrupted ({reason}); "
                            f"{hint}") from None
    if raw_meta.get('format') != FORMAT:
        raise MicrogptError(f"{path}: a safetensors file, but not a microgpt checkpoint; {hint}")
    version = raw_meta.get('format_version')
    if version not in READABLE_VERSIONS:
        newer = version is not None and version.isdigit() and int(version) > FORMAT_VERSION
        advice = ("upgrade microgpt to read it" if newer
                  else "load it with the microgpt version that wrote it, or train again")
        raise MicrogptError(f"{path}: checkpoint format version {version or '(none)'}, but this microgpt reads "
                            f"versions {' and '.join(READABLE_VERSIONS)}; {advice}")
    try:
        meta = {k: (v if k in ('format', 'format_version') else json.loads(v)) for k, v in raw_meta.items()}
        model_cfg = ModelConfig.from_dict(meta['model_config']).validate()
        train_cfg = TrainConfig(**meta['train_config'])
        vocab = Vocabulary(meta['vocab']['chars'], meta['vocab']['bos_first'])
        step, adam_steps = int(meta['step']), int(meta['adam_steps'])
    except (KeyError, TypeError, ValueError) as e:
        raise MicrogptError(f"{path}: damaged checkpoint metadata ({e}); {hint}") from None
    if vocab.size != model_cfg.vocab_size:
        raise MicrogptError(f"{path}: vocabulary of {vocab.size} tokens but a model for {model_cfg.vocab_size}; "
                            f"the checkpoint is damaged; {hint}")
    weights = {}
    for name, shape in parameter_shapes(model_cfg).items():
        if name not in tensors:
            raise MicrogptError(f"{path}: tensor {name} is missing; the checkpoint is damaged; {hint}")
        if tuple(tensors[name].shape) != shape:
            raise MicrogptError(f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, the config says "
                                f"{shape}; the checkpoint is damaged; {hint}")
        if not np.all(np.isfinite(tensors[name])):
            raise MicrogptError(f"{path}: tensor {name} holds NaN or infinite values; {hint}")
        weights[name] = tensors[name]
    n_params = sum(rows * cols for rows, cols in parameter_shapes(model_cfg).values())
    for name in ('adam.m', 'adam.v'):
        if name in tensors and tuple(tensors[name].shape) != (n_params,):
            raise MicrogptError(f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, the config says "
                                f"({n_params},); the checkpoint is damaged; {hint}")
    if version != '1':
        _verify_checksum(path, meta.get('tensors_sha256'), hint)
    return Checkpoint(model_cfg, train_cfg, vocab, weights, tensors.get('adam.m'), tensors.get('adam.v'),
                      adam_steps, step, meta.get('metrics', {}), meta)


def _verify_checksum(path, want, hint):
    """The SHA-256 of the file's tensor bytes (everything after the header) against the recorded one."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        f.seek(8 + int.from_bytes(f.read(8), 'little'))
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    if digest.hexdigest() != want:
        raise MicrogptError(f"{path}: the tensor data does not match its checksum (tensors_sha256), so the file "
                            f"was damaged after it was written; {hint}, or use an earlier copy")


def restore_engine(ckpt, engine):
    """Weights and Adam state of `ckpt` into an engine built with ckpt.model_cfg."""
    engine.load_state(EngineState(ckpt.weights, ckpt.adam_m, ckpt.adam_v, ckpt.adam_steps))
    return engine

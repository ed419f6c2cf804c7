"""Checkpoints as safetensors: the weights under their model names, the Adam state, and JSON metadata.

Metadata (all JSON strings): format, format_version, model_config, train_config, vocab, step,
adam_steps, metrics, dtype, engine, plus what the trainer adds (data_path, eval_every, ...). The file
loads with plain `safetensors.numpy.load_file` or `safetensors.torch.load_file`. Writes are atomic:
a temporary file in the same folder, fsync, rename, fsync of the folder; a crash leaves the old file.
"""

import json
import os
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from ..config import ModelConfig, TrainConfig, parameter_shapes
from ..data import Vocabulary
from ..engines import EngineState
from ..errors import MicrogptError

FORMAT = 'microgpt-checkpoint'
FORMAT_VERSION = 1


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
    from safetensors.numpy import save
    dtype = engine.dtype
    state = engine.state()
    tensors = {name: np.ascontiguousarray(np.asarray(w, dtype=dtype)) for name, w in state.weights.items()}
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
    _atomic_write(path, save(tensors, metadata=meta))


def _atomic_write(path, payload):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-', suffix='.safetensors')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    if version != str(FORMAT_VERSION):
        newer = version is not None and version.isdigit() and int(version) > FORMAT_VERSION
        advice = ("upgrade microgpt to read it" if newer
                  else "load it with the microgpt version that wrote it, or train again")
        raise MicrogptError(f"{path}: checkpoint format version {version or '(none)'}, but this microgpt reads "
                            f"version {FORMAT_VERSION}; {advice}")
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
    return Checkpoint(model_cfg, train_cfg, vocab, weights, tensors.get('adam.m'), tensors.get('adam.v'),
                      adam_steps, step, meta.get('metrics', {}), meta)


def restore_engine(ckpt, engine):
    """Weights and Adam state of `ckpt` into an engine built with ckpt.model_cfg."""
    engine.load_state(EngineState(ckpt.weights, ckpt.adam_m, ckpt.adam_v, ckpt.adam_steps))
    return engine

"""Checkpoints as safetensors: the weights under their model names, the Adam state, and JSON metadata.

Metadata (all strict JSON strings: a non-finite number is written null): format, format_version,
model_config, train_config, vocab, step, adam_steps, metrics, dtype, engine, sha256, plus what the
trainer adds (data_path, eval_every, ...). The file loads with plain `safetensors.numpy.load_file` or
`safetensors.torch.load_file`. Loading checks every value as the command line's are checked.

The same state gives the same bytes: we write the safetensors layout ourselves (8-byte header length, JSON
header with sorted keys, then the tensors back to back in the parameter table's order), because the
safetensors library writes its metadata in a random order. `sha256` is the SHA-256 of that header without
`sha256` itself, then of the tensor bytes: a changed byte anywhere in the file is caught on loading (format
version 3). Version 2 files hold `tensors_sha256`, of the tensor bytes only; version 1 files have none.

Writes are atomic: a temporary `.tmp-PID-*.safetensors` in the same folder, fsync, rename, fsync of the
folder; a crash leaves the old file, and the next save into that folder removes the temporaries of saves
whose process is gone. A failed write (full disk, read-only folder) is a MicrogptError naming the path.
"""

import hashlib
import json
import math
import os
import stat
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..config import LAYER_PARAMETERS, ModelConfig, SettingError, TrainConfig, is_kind, parameter_shapes
from ..data import Vocabulary
from ..engines import EngineState
from ..errors import MicrogptError
from ..presets import DEFAULT_PRESET, PRESETS
from ..tempfiles import TEMPORARY_PREFIX, make_temporary, remove_quietly
from .setup import RunConfig

FORMAT = 'microgpt-checkpoint'
FORMAT_VERSION = 3
READABLE_VERSIONS = ('1', '2', '3')  # 1: no checksum; 2: tensors_sha256, of the tensor bytes only
CHECKSUM = 'sha256'
SAFETENSORS_DTYPES = {'float32': 'F32', 'float64': 'F64'}
HINT = "give a model.safetensors written by `microgpt train --out DIR`"
REQUIRED = ('model_config', 'train_config', 'vocab', 'step', 'adam_steps', 'metrics', 'dtype', 'engine')
# entries the trainer records -> the RunConfig field each records
RUN_SETTINGS = {'engine': 'engine', 'dtype': 'dtype', 'data_path': 'data', 'eval_every': 'eval_every',
                'val_fraction': 'val_fraction', 'val_split': 'val_split'}


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
    _check_loadable(engine.cfg, vocab, tcfg, step, state.adam_steps, metrics, tensors)
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


def _check_loadable(cfg, vocab, tcfg, step, adam_steps, metrics, tensors):
    """ValueError where load_checkpoint would refuse what save_checkpoint was asked to write, as damaged."""
    if vocab.size != cfg.vocab_size:
        raise ValueError(f"a vocabulary of {vocab.size} tokens for a model of {cfg.vocab_size}")
    for what, count in (('step', step), ('adam_steps', adam_steps)):
        if not (is_kind(count, int) and 0 <= count <= tcfg.steps):
            raise ValueError(f"{what} must be an integer from 0 to the train config's steps ({tcfg.steps}), "
                             f"got {count!r}")
    if not _are_metrics(metrics):
        raise ValueError(f"metrics must map names to numbers or None, got {metrics!r}")
    for name, array in tensors.items():
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} holds NaN or infinite values")
    if np.any(tensors['adam.v'] < 0):
        raise ValueError("adam.v (Adam's mean squared gradient) holds negative values")


def _are_metrics(metrics):
    return isinstance(metrics, dict) and all(value is None or is_kind(value, float) for value in metrics.values())


def rewrite_metadata(path, entries):
    """Replace these metadata entries (name -> JSON string) of the checkpoint at `path`, atomically; its tensors
    stay as they are, in their order."""
    from safetensors.numpy import load
    data = _read_once(path)
    tensors, header = load(data), _header(data)
    meta = header['__metadata__']
    order = sorted(tensors, key=lambda name: header[name]['data_offsets'][0])
    meta = {**meta, **{k: _strict_json(v) for k, v in entries.items()}}
    _atomic_write(path, safetensors_bytes({name: tensors[name] for name in order}, meta))


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
    """The safetensors file of `tensors` (name -> array, in this order) with `meta` and its sha256; the same
    input gives the same bytes."""
    header, offset, chunks = {}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder('<'), copy=False).tobytes()
        header[name] = {'dtype': SAFETENSORS_DTYPES[array.dtype.name], 'shape': list(array.shape),
                        'data_offsets': [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    payload = b''.join(chunks)
    header['__metadata__'] = {key: text for key, text in meta.items() if key != CHECKSUM}  # a stale one is replaced
    digest = hashlib.sha256(_canonical(header))
    digest.update(payload)
    header['__metadata__'][CHECKSUM] = json.dumps(digest.hexdigest())
    encoded = _canonical(header)
    encoded += b' ' * (-len(encoded) % 8)  # safetensors pads the header with spaces to 8-byte alignment
    return len(encoded).to_bytes(8, 'little') + encoded + payload


def _canonical(header):
    """The header as written: JSON with sorted keys and no spaces."""
    return json.dumps(header, sort_keys=True, separators=(',', ':'), ensure_ascii=False).encode('utf-8')


def _atomic_write(path, payload):
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = make_temporary(folder, TEMPORARY_PREFIX, '.safetensors', shared=True)
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
        kept = "its previous version is kept" if os.path.exists(path) else "nothing was written in its place"
        raise MicrogptError(f"{path}: cannot write the checkpoint ({e.strerror}); {kept}; free some space or "
                            f"give another --out") from None
    except BaseException:  # Ctrl-C in the middle of the write: no partial file stays behind
        remove_quietly(tmp)
        raise


def load_checkpoint(path):
    """Read and check a checkpoint; every problem is a MicrogptError saying what to do."""
    from safetensors import SafetensorError
    from safetensors.numpy import load
    if not os.path.exists(path):
        raise MicrogptError(f"{path}: no such checkpoint; {HINT}")
    if os.path.isdir(path):
        raise MicrogptError(f"{path}: is a directory; {HINT} (e.g. {os.path.join(path, 'model.safetensors')})")
    try:
        data = _read_once(path)
        tensors = load(data)
        raw_meta = _header(data).get('__metadata__') or {}
    except (SafetensorError, OSError, ValueError, Exception) as e:  # safetensors raises several types
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MicrogptError(f"{path}: not a readable safetensors file, truncated or corrupted ({reason}); "
                            f"{HINT}") from None
    if raw_meta.get('format') != FORMAT:
        raise MicrogptError(f"{path}: a safetensors file, but not a microgpt checkpoint; {HINT}")
    version = raw_meta.get('format_version')
    if version not in READABLE_VERSIONS:
        newer = version is not None and version.isdigit() and int(version) > FORMAT_VERSION
        advice = ("upgrade microgpt to read it" if newer
                  else "load it with the microgpt version that wrote it, or train again")
        raise MicrogptError(f"{path}: checkpoint format version {version or '(none)'}, but this microgpt reads "
                            f"versions {', '.join(READABLE_VERSIONS[:-1])} and {READABLE_VERSIONS[-1]}; {advice}")
    if version == '2':
        _verify_checksum(path, data, raw_meta.get('tensors_sha256'), covers_header=False)
    elif version != '1' or CHECKSUM in raw_meta:  # also a version 3 file whose version byte turned into a 1
        _verify_checksum(path, data, raw_meta.get(CHECKSUM), covers_header=True)
    meta = _decoded(path, raw_meta, strict=version != '1')
    model_cfg, train_cfg, vocab, step, adam_steps = _recorded(path, meta, complete=version != '1')
    if vocab.size != model_cfg.vocab_size:
        raise MicrogptError(f"{path}: vocabulary of {vocab.size} tokens but a model for {model_cfg.vocab_size}; "
                            f"the checkpoint is damaged; {HINT}")
    if model_cfg.n_layer * len(LAYER_PARAMETERS) > len(tensors):  # before a damaged n_layer builds a huge table
        raise _damaged(path, f"model_config.n_layer {model_cfg.n_layer} needs more tensors than the {len(tensors)} "
                             f"in the file")
    weights = {}
    for name, shape in parameter_shapes(model_cfg).items():
        if name not in tensors:
            raise MicrogptError(f"{path}: tensor {name} is missing; the checkpoint is damaged; {HINT}")
        weights[name] = _checked_tensor(path, name, tensors[name], shape, meta['dtype'])
    n_params = sum(rows * cols for rows, cols in parameter_shapes(model_cfg).values())
    adam = {name: _checked_tensor(path, name, tensors[name], (n_params,), meta['dtype'])
            for name in ('adam.m', 'adam.v') if name in tensors}
    if 'adam.v' in adam and np.any(adam['adam.v'] < 0):
        raise MicrogptError(f"{path}: tensor adam.v (Adam's mean squared gradient) holds negative values; the "
                            f"checkpoint is damaged; {HINT}")
    return Checkpoint(model_cfg, train_cfg, vocab, weights, adam.get('adam.m'), adam.get('adam.v'),
                      adam_steps, step, meta['metrics'], meta)


def _damaged(path, what):
    return MicrogptError(f"{path}: damaged checkpoint metadata: {what}; {HINT}")


def _decoded(path, raw_meta, strict):
    """Every metadata entry JSON-decoded (format and format_version are plain strings). From version 2 on the
    metadata is strict JSON (a NaN or an infinity was written null), so there a non-finite number is damage."""
    def refuse(text):
        raise ValueError(f"{text} is not a finite number")

    def finite(text):
        value = float(text)
        return value if math.isfinite(value) else refuse(text)
    options = {'parse_constant': refuse, 'parse_float': finite} if strict else {}
    meta = {}
    for key, text in raw_meta.items():
        try:
            meta[key] = text if key in ('format', 'format_version') else json.loads(text, **options)
        except (ValueError, RecursionError) as e:
            raise _damaged(path, f"{key} is not {'strict ' if strict else ''}JSON ({e})") from None
        try:  # JSON's \ud800 escapes decode to characters that no path, vocabulary or output can hold
            json.dumps(meta[key], ensure_ascii=False).encode('utf-8')
        except UnicodeEncodeError as e:
            raise _damaged(path, f"{key} holds {e.object[e.start:e.end]!r}, half of a UTF-16 pair, not a "
                                 f"character") from None
    return meta


def _recorded(path, meta, complete):
    """(model config, train config, vocabulary, step, Adam steps) of the decoded metadata. Every value is
    checked by the class it records (check_settings and the class's own checks), as the command line's values
    are; an error names the checkpoint's entry."""
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise _damaged(path, f"{missing[0]} is missing")
    model_cfg = _built(path, meta, 'model_config', ModelConfig, complete)
    train_cfg = _built(path, meta, 'train_config', TrainConfig, complete)
    vocab = _built(path, meta, 'vocab', Vocabulary, complete)
    entries = {field: key for key, field in RUN_SETTINGS.items()}
    try:
        RunConfig(**{field: meta[key] for key, field in RUN_SETTINGS.items() if key in meta})
    except SettingError as e:
        raise _damaged(path, e.words(lambda field: entries.get(field, field))) from None
    step = _count(path, meta, 'step', train_cfg.steps, 'train_config.steps')
    adam_steps = _count(path, meta, 'adam_steps', train_cfg.steps, 'train_config.steps')  # one per step
    metrics = meta['metrics']
    if not _are_metrics(metrics):
        raise _damaged(path, "metrics must map names to numbers or null")
    best = meta.get('best_val_loss')
    if not (best is None or is_kind(best, float) and best >= 0):
        raise _damaged(path, f"best_val_loss must be a loss (a number >= 0) or null, got {best!r}")
    save_every = meta.get('save_every', 0)  # recorded since 2026-12-01
    if not (is_kind(save_every, int) and save_every >= 0):
        raise _damaged(path, f"save_every must be a whole number >= 0, got {save_every!r}")
    if meta.get('preset', DEFAULT_PRESET) not in PRESETS:
        raise _damaged(path, f"preset must be one of {', '.join(PRESETS)}, got {meta['preset']!r}")
    return model_cfg, train_cfg, vocab, step, adam_steps


def _built(path, meta, key, cls, complete):
    """cls(**meta[key]). From format 2 on every field is written; earlier files take the defaults of the
    fields added since."""
    entry = meta[key]
    if not isinstance(entry, dict):
        raise _damaged(path, f"{key} must be a JSON object, got {type(entry).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(entry) - set(names))
    if unknown:
        raise MicrogptError(f"{path}: unknown {key} entries {unknown}: the checkpoint was written by a newer "
                            f"microgpt; upgrade microgpt to load it")
    missing = [name for name in names if name not in entry]
    if complete and missing:
        raise _damaged(path, f"{key}.{missing[0]} is missing")
    try:  # JSON has no tuples: a list is a tuple field's value
        return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in entry.items()})
    except SettingError as e:
        raise _damaged(path, e.words(lambda name: f"{key}.{name}")) from None


def _count(path, meta, key, most, what):
    value = meta[key]
    if not (is_kind(value, int) and 0 <= value <= most):
        raise _damaged(path, f"{key} must be an integer from 0 to {what} ({most}), got {value!r}")
    return value


def _checked_tensor(path, name, array, shape, dtype):
    """`array` if it has the shape and dtype the metadata says and holds only finite numbers."""
    if tuple(array.shape) != shape:
        raise MicrogptError(f"{path}: tensor {name} has shape {tuple(array.shape)}, the config says {shape}; the "
                            f"checkpoint is damaged; {HINT}")
    if array.dtype.name != dtype:
        raise _damaged(path, f"dtype {dtype}, but tensor {name} is {array.dtype.name}")
    if not np.all(np.isfinite(array)):
        raise MicrogptError(f"{path}: tensor {name} holds NaN or infinite values; {HINT}")
    return array


HEADER_LIMIT = 100_000_000  # bytes of a safetensors header, safetensors' own limit


def _read_once(path):
    """The bytes of the safetensors file at `path`, read in one opening (a run saving meanwhile renames a new file
    over the path: read twice, the tensors of one file met the checksum of the next), and only as many as its
    header says, and one more (/dev/zero or an endless pipe is refused, not read until memory runs out)."""
    with open(path, 'rb') as f:
        start = f.read(8)
        length = int.from_bytes(start, 'little')
        if len(start) < 8 or not 0 < length <= HEADER_LIMIT:
            raise ValueError(f"a header of {length} bytes" if len(start) == 8 else "shorter than a header")
        header = f.read(length)
        offsets = [entry['data_offsets'][1] for name, entry in json.loads(header).items() if name != '__metadata__']
        rest = max(offsets, default=0) + 1  # (one byte more: safetensors refuses a tail)
        info = os.fstat(f.fileno())
        if stat.S_ISREG(info.st_mode):  # a damaged header's claim does not size the read (Python allocates it first)
            rest = min(rest, info.st_size)
        return start + header + f.read(rest)


def _header(data):
    """The JSON header of safetensors bytes (safetensors has read them already: they parse)."""
    return json.loads(data[8:8 + int.from_bytes(data[:8], 'little')])


def _verify_checksum(path, data, want, covers_header):
    """The SHA-256 recorded at saving (`want`, as a JSON string) against that of the file's bytes `data`: of the
    tensor bytes (everything after the header), preceded from version 3 on by the header without the checksum, in
    the canonical JSON it was written in. Checked before any value is read: a changed byte is named as damage."""
    header = _header(data)
    header['__metadata__'].pop(CHECKSUM, None)
    digest = hashlib.sha256(_canonical(header) if covers_header else b'')
    digest.update(memoryview(data)[8 + int.from_bytes(data[:8], 'little'):])
    if json.dumps(digest.hexdigest()) != want:
        what = 'the file' if covers_header else 'the tensor data'
        raise MicrogptError(f"{path}: {what} does not match its checksum "
                            f"({CHECKSUM if covers_header else 'tensors_sha256'}), so the file was damaged after "
                            f"it was written; {HINT}, or use an earlier copy")


def restore_engine(ckpt, engine):
    """Weights and Adam state of `ckpt` into an engine built with ckpt.model_cfg."""
    engine.load_state(EngineState(ckpt.weights, ckpt.adam_m, ckpt.adam_v, ckpt.adam_steps))
    return engine

"""Export a checkpoint as one self-contained web page that runs the model in the browser.

`export_web` writes DIR/index.html: web_template/index.html with the model (microgpt.js), the training worker
(worker.js), the sampler (sampling.js), the charts (charts.js) and the interface (page.js) inlined, and the
page's data as JSON: the configuration, THE parameter table (config.parameter_table; the JavaScript takes every
offset and shape from it), the weights as base64 little-endian float32 in that table's flat order, the
vocabulary, the run's metrics (metrics.jsonl beside the checkpoint) and the training documents. No CDN, no
server, no build step: it opens from file:// and from any static host.
"""

import base64
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from importlib import resources

import numpy as np

from ..config import MLP_EXPANSION, RMSNORM_EPS, ModelConfig, TrainConfig, num_parameters, parameter_table
from ..errors import MicrogptError
from ..tempfiles import folder_for, folder_problem, write_text
from ..train.checkpoint import load_checkpoint
from ..train.recorded import recorded_documents
from ..train.run import METRICS_FILE, read_metrics_records
from .c import check_float32_logits

PAGE = 'index.html'
TEMPLATE_SCRIPTS = {'@MICROGPT_JS@': 'microgpt.js', '@WORKER_JS@': 'worker.js', '@SAMPLING_JS@': 'sampling.js',
                    '@CHARTS_JS@': 'charts.js', '@PAGE_JS@': 'page.js'}
MAX_CURVE_POINTS = 2000              # a longer training curve is drawn from the means of this many bins of steps
MAX_EMBEDDED_CHARS = 4 * 2**20       # training documents beyond this are left out of the page (paste a list instead)


@dataclass(frozen=True)
class WebExport:
    out_dir: str
    page: str                # the path of index.html
    metrics_path: str        # the metrics.jsonl drawn, or None
    num_documents: int       # training documents embedded for the Train button (0 when none)


def export_web(checkpoint, out_dir, force=False, metrics_path=None):
    """Write the page of the checkpoint at path `checkpoint` into out_dir; MicrogptError if it cannot.

    out_dir must be new or empty unless `force`. metrics_path defaults to the metrics.jsonl beside the checkpoint,
    when there is one.
    """
    ckpt = load_checkpoint(checkpoint)
    _check_exportable(ckpt)
    _check_out_dir(out_dir, force)
    if metrics_path is None:
        beside = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), METRICS_FILE)
        metrics_path = beside if os.path.isfile(beside) else None
    metrics = read_metrics(metrics_path, ckpt.train_cfg.steps) if metrics_path else None
    documents, source = training_documents(ckpt)
    page = render_page(page_data(ckpt, metrics, documents, source))
    path = os.path.join(out_dir, PAGE)
    where = out_dir
    try:
        with folder_for(out_dir) as written:
            where = path
            write_text(path, page)  # whole or not at all
            written.append(path)
    except OSError as e:
        why = folder_problem(out_dir, e) if where == out_dir else e.strerror  # a file or a dead link in the way
        raise MicrogptError(f"{where}: cannot write the web page: {why}") from None
    return WebExport(out_dir, path, metrics_path, len(documents or ()))


def _check_exportable(ckpt):
    cfg, vocab = ckpt.model_cfg, ckpt.vocab
    if vocab.size != cfg.vocab_size or vocab.bos_first != (cfg.bos == 'first'):
        raise MicrogptError(f"the checkpoint's vocabulary ({vocab.size} tokens) does not match its model "
                            f"({cfg.vocab_size} tokens, BOS {cfg.bos}); the checkpoint is damaged; re-train it")
    for name, weights in ckpt.weights.items():
        with np.errstate(over='ignore'):
            if not np.all(np.isfinite(np.asarray(weights).astype(np.float32))):
                raise MicrogptError(f"weight {name} holds values that are infinite in float32 (the page's precision); "
                                    f"export an earlier checkpoint of the run")
    check_float32_logits(ckpt.weights, cfg)


def _check_out_dir(out_dir, force):
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise MicrogptError(f"{out_dir}: exists and is not a directory; give a folder for the web page")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise MicrogptError(f"{out_dir}: exists and is not empty; give a new or empty folder, or --force to write "
                            f"{PAGE} into it anyway")


# ---- what the page shows

def read_metrics(path, steps):
    """{'train': [[step, loss]...], 'val': [[step, loss]...], 'steps': N} from a metrics.jsonl (train/run.py)."""
    try:
        records = read_metrics_records(path, "move it away to export the page without its loss curves")
    except OSError as e:
        raise MicrogptError(f"{path}: cannot read the run's metrics: {e.strerror}; give the metrics.jsonl of "
                            f"`microgpt train --out DIR`") from None
    # a diverged step has no place on the chart
    train = [[step, loss] for step, loss, _ in records if math.isfinite(loss)]
    val = [[step, loss] for step, _, loss in records if loss is not None and math.isfinite(loss)]
    if len(train) > MAX_CURVE_POINTS:  # means of equal bins of steps, each drawn at its last step
        bins = np.array_split(np.array(train), MAX_CURVE_POINTS)
        train = [[int(b[-1, 0]), float(b[:, 1].mean())] for b in bins]
    steps = max([steps] + [point[0] for point in train + val])
    return {'train': train, 'val': val, 'steps': steps}


def training_documents(ckpt):
    """(documents the run trained on, or None; where they come from), for the page's Train button."""
    data_path = ckpt.meta.get('data_path')
    if not data_path:
        return None, 'not recorded in the checkpoint; paste a list'
    name = os.path.basename(data_path)
    try:
        trained = recorded_documents(ckpt)[0]  # a URL's download, and not a file edited since training
    except MicrogptError:  # gone, edited (its identity, or characters outside the vocabulary), unreachable
        return None, f'{name} is not readable here, or has changed since training; paste a list'
    if int(trained.lengths().sum(dtype=np.int64)) - 2 * len(trained) > MAX_EMBEDDED_CHARS:  # counted in the tokens
        return None, f'{name} is too large to put in the page; paste a list'
    return list(trained.texts()), name


def model_spec(cfg):
    """What the JavaScript model needs: the configuration, the parameter table and the shared constants."""
    return {
        'cfg': {**cfg.to_dict(), 'bos_id': cfg.bos_id},
        'table': [asdict(p) for p in parameter_table(cfg)],
        'attn_scale': (cfg.head_dim ** 0.5) ** -1,  # the engines' constant; the page rounds it to float32
        'rmsnorm_eps': RMSNORM_EPS,
        'mlp_expansion': MLP_EXPANSION,
    }


def flat_weights(weights, cfg):
    """(P,) float32: each parameter at its offset of the parameter table."""
    flat = np.zeros(num_parameters(cfg), np.float32)
    for p in parameter_table(cfg):
        flat[p.offset:p.offset + p.size] = np.asarray(weights[p.name], np.float32).ravel()
    return flat


def _describe(cfg):
    return (f"{cfg.n_layer} layer{'s' if cfg.n_layer > 1 else ''}, n_embd {cfg.n_embd}, {cfg.n_head} heads, "
            f"block_size {cfg.block_size}, {num_parameters(cfg):,} parameters")


def page_data(ckpt, metrics, documents, source):
    cfg, vocab, tcfg = ckpt.model_cfg, ckpt.vocab, ckpt.train_cfg
    tokens = [None] * cfg.vocab_size
    for ch, token_id in vocab.index.items():
        tokens[token_id] = ch
    data_path = ckpt.meta.get('data_path')
    best = ckpt.meta.get('best_val_loss')
    if isinstance(best, (int, float)) and math.isfinite(best):
        held_out = f"{best:.4f} nats per character (best of the run)"
    elif metrics and metrics['val']:
        held_out = f"{min(loss for _, loss in metrics['val']):.4f} nats per character (best in metrics.jsonl)"
    else:
        held_out = "not measured (trained without --eval-every)"
    switches = (f"norm {cfg.norm}, {cfg.mlp_activation}, attention {cfg.attention}, BOS {cfg.bos}"
                + (", lm_head tied to wte" if cfg.tie_lm_head else ""))
    info = {
        'model': _describe(cfg), 'switches': switches,
        'vocabulary': f"{len(vocab.chars)} characters + BOS: {vocab.chars}",
        'step': f"{ckpt.step} / {tcfg.steps}",
        'held-out loss': held_out,
        'training': f"lr {tcfg.lr}, batch {tcfg.batch_size}, seed {tcfg.seed}, {ckpt.meta.get('engine', '?')} engine, "
                    f"{ckpt.meta.get('dtype', '?')}",
    }
    if metrics and metrics['train']:
        info['training loss'] = f"{metrics['train'][-1][1]:.4f} at step {metrics['train'][-1][0]}"
    default = ModelConfig(vocab_size=cfg.vocab_size, bos=cfg.bos)  # microgpt's model on this vocabulary
    defaults = TrainConfig()
    return {
        'title': f"{os.path.basename(data_path) if data_path else 'a model'}, {num_parameters(cfg):,} parameters",
        'spec': model_spec(cfg),
        'weights': base64.b64encode(flat_weights(ckpt.weights, cfg).astype('<f4').tobytes()).decode('ascii'),
        'tokens': tokens,
        'info': info,
        'metrics': metrics,
        'train': {'spec': model_spec(default), 'summary': _describe(default), 'documents': documents, 'source': source,
                  'config': {'steps': defaults.steps, 'lr': defaults.lr, 'beta1': defaults.beta1,
                             'beta2': defaults.beta2, 'eps': defaults.eps}},
    }


def render_page(data):
    """index.html with the scripts inlined and `data` as JSON; '<' is escaped so no text can end a <script>."""
    template = resources.files('microgpt.export') / 'web_template'
    values = {marker: (template / name).read_text(encoding='utf-8') for marker, name in TEMPLATE_SCRIPTS.items()}
    values['@TITLE@'] = _html_text(data['title'])
    values['@DATA@'] = json.dumps(data, separators=(',', ':'), allow_nan=False).replace('<', '\\u003c')
    # one pass, so a marker inside a substituted text (a document, a title) stays as it is
    return re.sub('|'.join(map(re.escape, values)), lambda m: values[m.group(0)],
                  (template / PAGE).read_text(encoding='utf-8'))


def _html_text(text):
    return text.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')

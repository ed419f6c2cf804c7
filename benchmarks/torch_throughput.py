"""Training tokens per second of the torch engine on one job, in one process or across a torchrun launch.

    python benchmarks/torch_throughput.py --model makemore --device cuda --dtype bfloat16
    torchrun --standalone --nproc-per-node 8 benchmarks/torch_throughput.py --model large --device cuda

Under torchrun the engine joins the launch's process group (NCCL on CUDA, gloo on CPU) and each process takes
its share of the same global batch, so more processes run the same training faster (strong scaling). Tokens
are predicted characters (padding excluded), counted over the global batch. The main process prints one
table row; benchmarks/gpu.sh runs this script over models, precisions and process counts.

Models: `makemore`, the makemore preset's model and batch (4 layers x 64 channels, block 16, batch 32) on
names; `large`, 8 layers x 256 channels, 8 heads, block 64, batch 256, on documents of 8 names joined by
spaces (about 55 characters, so the block is used).
"""

import argparse
import os
import random
import sys
import time
from dataclasses import fields

import torch.distributed as dist

from microgpt.config import ModelConfig, TrainConfig
from microgpt.data import Vocabulary, bundled_dataset_path, load_documents, shuffled
from microgpt.engines import make_engine
from microgpt.presets import PRESETS

SHARED_NAMES = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'names.txt')
MAKEMORE = PRESETS['makemore']
MODELS = {
    # (ModelConfig fields, batch size, names joined into one document)
    'makemore': ({f.name: MAKEMORE[f.name] for f in fields(ModelConfig) if f.name in MAKEMORE},
                 MAKEMORE['batch_size'], 1),
    'large': ({'n_layer': 8, 'n_embd': 256, 'n_head': 8, 'block_size': 64}, 256, 8),
}
ROW = '{model:<9} {processes:>9} {device:<7} {dtype:<9} {batch:>6} {tokens_per_s:>12} {ms_per_step:>9}'
HEADER = ROW.format(model='model', processes='processes', device='device', dtype='dtype', batch='batch',
                    tokens_per_s='tokens/s', ms_per_step='ms/step')


def job(model, data_path, seed=42):
    """The seeded job: documents (names, or several joined), vocabulary, config, and the rng to initialise from."""
    overrides, batch_size, joined = MODELS[model]
    rng = random.Random(seed)
    names = load_documents(data_path)
    docs = [' '.join(names[i:i + joined]) for i in range(0, len(names) - joined + 1, joined)]
    docs = shuffled(docs, rng)
    vocab = Vocabulary.from_documents(docs)
    cfg = ModelConfig(vocab_size=vocab.size, **overrides).validate()
    return rng, [vocab.document_tokens(d) for d in docs], cfg, batch_size


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    default = SHARED_NAMES if os.path.exists(SHARED_NAMES) else bundled_dataset_path()
    parser.add_argument('--data', default=default, help=f'names, one a line (default: {default})')
    parser.add_argument('--model', choices=list(MODELS), default='makemore', help='the job (default: makemore)')
    parser.add_argument('--device', default='auto', help='cpu, cuda, mps or auto (default: auto)')
    parser.add_argument('--dtype', default='float32', help='float64, float32 or bfloat16 (default: float32)')
    parser.add_argument('--steps', type=int, default=50, help='timed steps (default: 50)')
    parser.add_argument('--warmup', type=int, default=10, help='untimed steps first (default: 10)')
    parser.add_argument('--batch-size', type=int, help="global batch (default: the model's)")
    parser.add_argument('--header', action='store_true', help='print the table header and exit')
    args = parser.parse_args()
    if args.header:
        print(HEADER)
        return
    rng, doc_tokens, cfg, batch_size = job(args.model, args.data)
    batch_size = args.batch_size or batch_size
    engine = make_engine('torch', cfg, rng, args.dtype, args.device)
    tcfg = TrainConfig(steps=args.warmup + args.steps, batch_size=batch_size)
    lrs = [tcfg.lr] * tcfg.steps
    engine.train_steps(doc_tokens, 0, args.warmup, tcfg, lrs[:args.warmup])  # returns after the device is done
    start = time.perf_counter()
    engine.train_steps(doc_tokens, args.warmup, tcfg.steps, tcfg, lrs[args.warmup:])
    seconds = time.perf_counter() - start
    n = len(doc_tokens)
    tokens = sum(min(cfg.block_size, len(doc_tokens[d % n]) - 1)
                 for d in range(args.warmup * batch_size, tcfg.steps * batch_size))
    if engine.is_main_process:
        processes = int(os.environ.get('WORLD_SIZE', '1'))
        print(ROW.format(model=args.model, processes=processes, device=engine.device.type, dtype=args.dtype,
                         batch=batch_size, tokens_per_s=f'{tokens / seconds:.0f}',
                         ms_per_step=f'{1e3 * seconds / args.steps:.2f}'), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == '__main__':
    sys.exit(main())

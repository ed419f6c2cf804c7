"""The commands that read a saved model, and what they print: `sample`, `eval`, `export`, `info`; with `given`
(the flags a command was given) and the samples' printing, which `train` shares. Parsing lives in cli.py; a
command reads its flags from the parsed namespace into config dataclasses and never changes the namespace."""

import random
import shlex
from dataclasses import fields

from .bars import data_bar
from .config import SAMPLE_SEED, SampleConfig, check_sampling_flags, check_seed
from .engines import make_engine
from .ensemble import EnsembleDecoder, ensemble_loss
from .errors import MicrogptError
from .fetch import is_url, local_path
from .sampling import generate
from .train.loop import evaluate
from .train.recorded import recorded_data, recorded_documents, recorded_split


def given(args, *config_classes):
    """The flags the user gave for the fields of `config_classes` (a flag left out is not in the namespace, or is
    None there: an old spelling of it, left out too, leaves None)."""
    return {f.name: getattr(args, f.name) for cls in config_classes for f in fields(cls)
            if getattr(args, f.name, None) is not None}


def print_samples(decoder, block_size, vocab, rng, sample_cfg, out, prompt_ids, training=None):
    """Print the samples as they are drawn, in chunks of 16, 32, 64, ... names (`sample --num-samples 100000`
    printed nothing for minutes); with `training` (documents.Documents), mark those that are training documents,
    searched for a chunk at a time (a pass over the documents of each length the chunk's names have)."""
    drawn, novel, chunk = 0, 0, 16
    while drawn < sample_cfg.num_samples:
        names = [vocab.decode(generate(decoder, vocab.bos_id, block_size, rng, sample_cfg.temperature,
                                       sample_cfg.top_k, sample_cfg.top_p, prompt_ids))
                 for _ in range(min(chunk, sample_cfg.num_samples - drawn))]
        known = training.found(names) if training is not None else set()
        for name in names:
            drawn += 1
            print(f"sample {drawn:2d}: {name}{' *' if name in known else ''}", file=out)
        out.flush()
        novel += sum(name not in known for name in names)
        chunk *= 2
    if training is not None and drawn:
        print(f"novel: {novel} / {drawn} (* = already in the training data)", file=out)


def _cd_target(path):
    """`path` as `cd` takes it in a shell: quoted, and a relative one that begins with a dash led by ./ (cd would
    read it as an option)."""
    return shlex.quote(f'./{path}' if path.startswith('-') else path)


def _engine_from_checkpoint(path):
    from .train.checkpoint import load_checkpoint, restore_engine
    ckpt = load_checkpoint(path)
    engine = make_engine('numpy', ckpt.model_cfg, random.Random(0), ckpt.meta.get('dtype', 'float64'))
    restore_engine(ckpt, engine)
    return ckpt, engine


def _models_from_checkpoints(paths):
    """(checkpoint, engine) of each path; several must share one vocabulary (an ensemble averages over it) and one
    context length (it averages at every position: the shorter context's would cut every name and score short)."""
    models = [_engine_from_checkpoint(path) for path in paths]
    first = models[0][0]
    for path, (ckpt, _) in zip(paths[1:], models[1:]):
        if ckpt.vocab.chars == first.vocab.chars and ckpt.model_cfg.bos != first.model_cfg.bos:
            raise MicrogptError(f"{path}: its BOS token is its vocabulary's {ckpt.model_cfg.bos} (the esp32 "
                                f"preset puts it first), {paths[0]}'s the {first.model_cfg.bos}; an ensemble needs "
                                f"models of one token order")
        if ckpt.vocab != first.vocab:
            raise MicrogptError(f"{path}: its vocabulary differs from {paths[0]}'s; an ensemble needs models "
                                f"trained on the same characters")
        if ckpt.model_cfg.block_size != first.model_cfg.block_size:
            raise MicrogptError(f"{path}: its context holds {ckpt.model_cfg.block_size} tokens (--block-size), "
                                f"{paths[0]}'s {first.model_cfg.block_size}; an ensemble needs models of one "
                                f"context length")
    return models


def _decoder(models):
    """One model's decoder, or an ensemble's, and the context length they all hold."""
    if len(models) == 1:
        return models[0][1].decoder(), models[0][1].cfg.block_size
    return EnsembleDecoder([engine.decoder() for _, engine in models]), models[0][1].cfg.block_size


def cmd_sample(args, out, err):
    sample_cfg = SampleConfig(**given(args, SampleConfig))
    check_sampling_flags(given(args, SampleConfig), [flag for flag, value in (
        ('--prompt', args.prompt), ('--data', args.data), ('--seed', args.seed is not None)) if value])
    if sample_cfg.num_samples == 0:  # train's 0 means train without sampling; here it would do nothing at all
        raise MicrogptError("--num-samples 0 samples nothing, which is all this command does; give 1 or more")
    seed = SAMPLE_SEED if args.seed is None else args.seed
    check_seed(seed)
    models = _models_from_checkpoints(args.checkpoint)
    ckpt = models[0][0]
    sample_cfg.check_vocabulary(ckpt.vocab.size)
    decoder, block_size = _decoder(models)
    prompt_ids = ckpt.vocab.encode(args.prompt)
    if len(prompt_ids) >= block_size:
        raise MicrogptError(f"--prompt has {len(prompt_ids)} characters; the model's context holds "
                            f"{block_size} tokens with BOS, so give at most {block_size - 1}")
    from .documents import file_documents  # NumPy: this command's models need it anyway
    unchecked = None  # why there is no novelty check: said once the data bar has gone
    with data_bar(err) as progress:
        notice = _notice_to(err, progress)
        if args.data is not None:  # a file the user names must be readable: no silent skip of the novelty check
            training = file_documents(local_path(args.data, progress), notice=notice, progress=progress)
        else:
            try:
                training = recorded_documents(ckpt, notice=notice, progress=progress)[0]
            except MicrogptError as e:  # gone, edited, unreachable, or too few now to split: the samples still come
                training, unchecked = None, e
    if unchecked is not None:
        print(f"microgpt: {unchecked}: no novelty check (give --data FILE)", file=err)
    print_samples(decoder, block_size, ckpt.vocab, random.Random(seed), sample_cfg, out, prompt_ids, training)


def cmd_eval(args, out, err):
    from .documents import file_documents  # NumPy: this command's models need it anyway
    models = _models_from_checkpoints(args.checkpoint)
    ckpt = models[0][0]
    if args.data is None and not ckpt.meta.get('eval_every'):
        several = (f" (of several checkpoints, the first one's split is scored: put one trained with a split first)"
                   if len(models) > 1 else '')
        raise MicrogptError(f"{args.checkpoint[0]} was trained without a held-out split (no --eval-every){several}; "
                            f"give --data FILE to evaluate on")
    with data_bar(err) as progress:
        notice = _notice_to(err, progress)
        if args.data is not None:
            docs = file_documents(local_path(args.data, progress), ckpt.vocab, notice, progress)
            what = args.data
        else:
            try:  # a run trained from a pipe is evaluated from one
                data_path = recorded_data(ckpt, notice, progress)
            except MicrogptError as e:  # --data scores every document of a file, not the run's held-out split
                if is_url(ckpt.meta.get('data_path') or ''):  # the download's advice ends e: give the file as --data
                    raise MicrogptError(f"{e} (as --data, a file is scored whole; the run's held-out split is scored "
                                        f"from the address's download, fetched once and kept)") from None
                raise MicrogptError(f"{e} (put the run's own data back there to score its held-out split); give "
                                    f"--data FILE to score every document of a file") from None
            docs = recorded_split(ckpt, file_documents(data_path, ckpt.vocab, notice, progress))[1]
            what = f"the held-out split of {ckpt.meta['data_path']}"
    block_size = models[0][1].cfg.block_size
    cut = int((docs.lengths() > block_size + 1).sum())  # tokens with both BOS: a document predicts all but one
    if cut:  # scored as training reads them: silently, a 40-character line scored as its first 16 characters
        print(f"microgpt: {cut:,} of {len(docs):,} documents are longer than the model's context of {block_size} "
              f"tokens: as in training, only their first {block_size} characters are scored, not their end",
              file=err)
    for path, (member, engine) in zip(args.checkpoint, models):
        loss = evaluate(engine, docs)
        name = f" {path}" if len(models) > 1 else ''
        print(f"loss {loss:.4f} nats per character on {len(docs)} document{'s' * (len(docs) != 1)} ({what}), "
              f"step {member.step}{name}", file=out)
    if len(models) > 1:
        decoder, block_size = _decoder(models)
        loss = ensemble_loss(decoder, docs, block_size)
        print(f"loss {loss:.4f} nats per character of the ensemble of {len(models)} (mean of their probabilities)",
              file=out)


def _print_memory(rows, out):
    width = max([68] + [len(item) for item, _ in rows])  # one column of sizes in info's three tables
    for item, size in rows:
        print(f"{item:<{width}} {size:>9,} bytes", file=out)


def cmd_export(args, out, err):
    if not args.out:  # as train, study and tune say it: an empty name is no folder
        raise MicrogptError("--out needs a folder name")
    if args.train and args.web:
        raise MicrogptError("--train writes a C program and --web a web page; give one of them (and another --out "
                            "for the other)")
    if args.force and not args.web:
        raise MicrogptError("--force lets --web write into a folder that is not empty; the C programs replace only "
                            "their own files, so leave --force out")
    if args.seed is not None:
        check_seed(args.seed)
    if args.train:
        _export_training_program(args, out, err)
        return
    if args.checkpoint is None:
        raise MicrogptError("export needs --checkpoint PATH; only --train can start without one")
    if args.low_memory or args.ram is not None or args.data is not None or args.seed is not None:
        raise MicrogptError("--data, --low-memory, --ram and --seed go with --train")
    if args.web:
        from .export.web import export_web
        info = export_web(args.checkpoint, args.out, force=args.force)
        print(f"wrote {info.page}: open it in a browser (no server needed)", file=out)
        return
    from .train.checkpoint import load_checkpoint
    from .export.c import export_c
    info = export_c(load_checkpoint(args.checkpoint), args.out)
    for path in info.files:
        print(f"wrote {path}", file=out)
    print(f"build: cd {_cd_target(info.out_dir)} && {info.build_command}", file=out)
    print("run:   ./microgpt_names 20 0.5 42   (names, temperature, seed)", file=out)
    _print_memory(info.memory, out)


def _notice_to(err, bar=None):
    """A notice printed as `microgpt: ...` on `err`, as it happens (before a stream is read: on a terminal, the
    command then waits for lines typed in), on a line of its own: the DataBar `bar` is closed first."""
    def notice(words):
        if bar is not None:
            bar.close()
        print(f"microgpt: {words}", file=err)
    return notice


def _export_training_program(args, out, err):
    from .export.c_train import export_training_program
    info = export_training_program(args.out, args.checkpoint, args.data, args.low_memory, args.ram, args.seed,
                                   on_stream=_notice_to(err))
    for path in info.files:
        print(f"wrote {path}", file=out)
    print(f"build: cd {_cd_target(info.out_dir)} && {info.build_command}", file=out)
    print("run:   ./microgpt_train 1000 42 20   (steps, seed, names)", file=out)
    _print_memory([(f"training RAM: {item}", size) for item, size in info.memory], out)


def cmd_info(args, out, err):
    from dataclasses import asdict
    from .train.checkpoint import load_checkpoint
    from .config import num_parameters
    from .export.c import memory_budget
    ckpt = load_checkpoint(args.checkpoint)
    meta = ckpt.meta
    print(f"checkpoint: {args.checkpoint} (format {meta['format_version']}, engine {meta.get('engine')}, "
          f"dtype {meta.get('dtype')})", file=out)
    print(f"step: {ckpt.step} / {ckpt.train_cfg.steps} (Adam steps {ckpt.adam_steps})", file=out)
    print("model: " + ' '.join(f"{k}={v}" for k, v in ckpt.model_cfg.to_dict().items()), file=out)
    print(f"num params: {num_parameters(ckpt.model_cfg)}", file=out)
    print(f"vocab: {ckpt.vocab.size} tokens: {ckpt.vocab.chars!r} + BOS ({ckpt.model_cfg.bos})", file=out)
    print("train: " + ' '.join(f"{k}={v}" for k, v in asdict(ckpt.train_cfg).items()), file=out)
    print(f"metrics: {ckpt.metrics}", file=out)
    for key in ('data_path', 'best_val_loss'):
        if key in meta:
            print(f"{key}: {meta[key]}", file=out)
    print("memory budget (float32):", file=out)
    _print_memory(memory_budget(ckpt.model_cfg), out)
    from .export.c_train import training_memory_budget
    for low_memory, what in ((False, 'training RAM'), (True, 'training RAM, low memory')):
        _print_memory([(f"{what}: {item}", size) for item, size in training_memory_budget(ckpt.model_cfg, low_memory)],
                      out)

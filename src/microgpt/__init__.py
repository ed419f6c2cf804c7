"""microgpt: train and run tiny GPT language models on any text file with one item per line.

Reading order, from the ground up (imports only ever point up this list; tests/test_layout.py checks it):

core      config.py      ModelConfig, TrainConfig, SampleConfig; THE parameter table every layout derives from
          presets.py     named configurations, as overrides of config fields
          data.py        documents, Vocabulary, held-out splits (makemore_split.py: makemore's own test set)
          corpus.py, documents.py   a data file as one cached token array, read as documents
          fetch.py, memory.py, tempfiles.py   --data URLs, the memory check, atomic writes
          processes.py   worker processes started with Ctrl-C held off (tune, study)
          dropout.py     the counter-based masks every engine draws
          sampling.py    logits -> token: temperature, top-k, top-p, generate; ensemble.py averages models
engines   engines/__init__.py   the engine contract (Engine, EngineState, Decoder) and make_engine
          engines/reference/    microgpt itself: autograd.py (Value), gpt.py
          engines/numpy/        the one to learn from: layers.py (forward/backward pairs), gpt.py, decoder.py
          engines/fused/        the one to time: numba kernels (plan, lanes, matmul, layers, gpt, adam, threads,
                                parallel, compile)
          engines/torch/        the same model in PyTorch, for GPUs and torchrun
          engines/params.py     flat parameter buffers with named views
train     train/setup.py  one run setup; loop.py (steps, evaluation); run.py (a whole run's events);
          recorded.py (what a checkpoint records, read back); checkpoint.py, plotting.py
tools     export/ (the C programs and the web page), bench/ (benchmark, study), tune/ (Optuna search)
cli       cli.py (flags generated from the config dataclasses), commands.py and model_commands.py (what each
          command does and prints)
"""

__version__ = '0.1.0'

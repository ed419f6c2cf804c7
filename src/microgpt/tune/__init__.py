"""`microgpt tune`: a hyper-parameter search on Optuna over whole training runs.

space.py says what is searched and how ranges follow the data; search.py runs trials (one TrainingRun each,
fused engine, held-out evaluation reported to Optuna's pruner) in one or several processes over one study
storage; report.py writes what a search found. The study lives in a database (SQLite in the output folder
by default, any Optuna storage URL otherwise), so a search can be continued and shared between machines.
"""

"""The run layer: everything between one agent class and one run directory on disk.

train.py       the Trainer (resume, run a chunk, log, evaluate, checkpoint, stop, fail), `train`, `train_seeds`
settings.py    the typed training settings: defaults, checks, CLI flags, spec keys, config.json, command line
multiseed.py   several seeds in one process (the vmapped chunk; `--seeds` parsing and directories)
evaluation.py  batched evaluation over a (K, N) grid in environment worker processes
runs.py        the run directory: file names, config.json/results.json schema, "is this run complete?"
checkpoint.py  orbax checkpoints of the training state
safety.py      the run-directory lock, graceful stops on signals, finiteness checks

It imports the core (`sorl`), the agents and the environments; the experiments layer and the CLI import it.
"""

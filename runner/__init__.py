"""The run layer: everything between one agent class and one run directory on disk.

train.py       the Trainer (resume, run a chunk, log, evaluate, checkpoint, stop, fail), `train`, `train_seeds`
settings.py    the typed training settings: defaults, checks, CLI flags, spec keys, config.json, command line
multiseed.py   several seeds in one process (the vmapped chunk; `--seeds` parsing and directories)
online.py      offline-to-online fine-tuning: the online phase, a seed runner that steps the environment
evaluation.py  batched evaluation over a (K, N) grid in environment worker processes
video.py       evaluation videos: episodes of one (K, N) cell rendered headless to MP4 (`--video-episodes`)
runs.py        the run directory: file names, config.json/results.json schema, "is this run complete?"
checkpoint.py  orbax checkpoints of the training state
safety.py      the run-directory lock, graceful stops on signals, finiteness checks
tracking.py    `--logger wandb|tensorboard`: copies of the run's rows for a tracking tool, never in the way

It imports the core (`sorl`), the agents and the environments; the experiments layer and the CLI import it.
"""

"""The experiments layer: sweeps, tables, plots and the benchmark, on top of the run layer (`runner`).

spec.py        sweep specs (TOML): agents x tasks x seeds x settings, one budget -> runs
specs/*.toml   the shipped studies: paper-{sorl,fql,rebrac,iql,bc}, local, scaling, smoke, demo
launchers.py   `sorl sweep`: skip finished runs, launch the rest (local process pool, Slurm via submitit, Ray)
worker.py      the process the local launcher starts for one job
aggregate.py   `sorl table`: mean ± std and IQM with stratified-bootstrap CIs, per task / environment / overall
paper.py       the published numbers (`--compare paper`)
plots.py       `sorl plot scaling` and `sorl plot curves` (matplotlib PNG/PDF)
bench.py       `sorl bench`: training, inference, evaluation and memory figures

The `sorl` subcommands that drive these live in `cli/` (the one layer above this one).
"""

"""The experiments layer: sweeps, tables and plots, reading and writing run directories only.

spec.py        sweep specs (TOML): agents x tasks x seeds x settings, one budget -> runs
specs/*.toml   the shipped studies: paper-{sorl,fql,rebrac,iql,bc}, local, scaling, smoke, demo
launchers.py   `sorl sweep`: skip finished runs, launch the rest (local process pool, Slurm via submitit, Ray)
worker.py      the process the local launcher starts for one job
aggregate.py   `sorl table`: mean ± std and IQM with stratified-bootstrap CIs, per task / environment / overall
paper.py       the published numbers (`--compare paper`)
plots.py       `sorl plot scaling` and `sorl plot curves` (matplotlib PNG/PDF)
commands.py    the CLI argument dataclasses, registered in sorl/cli.py
"""

"""`sorl plot compute` on a synthetic study of three agents: every agent on one frontier figure, its x axis the
network evaluations per action that each agent's contract gives (`runner.evaluation.network_evaluations`)."""

from __future__ import annotations

import pytest
from test_experiments_aggregate import write_run

from agents import get_agent
from cli import main as cli
from experiments import plots
from runner.evaluation import network_evaluations

STUDY = {  # agent -> {(K, N): success}, two seeds each on cube-single task1
    "sorl": {(1, 1): 0.2, (2, 1): 0.4, (2, 4): 0.5},
    "ifql": {(1, 1): 0.1, (10, 32): 0.6},
    "fql": {(1, 1): 0.3, (1, 4): 0.35},
}
COSTS = {  # K·N policy calls + N critic calls where N > 1 ranks; FQL's one-step policy: 1 call whatever K
    "sorl": {1, 2, 2 * 4 + 4},
    "ifql": {1, 10 * 32 + 32},
    "fql": {1, 1 * 4 + 4},
}


def test_network_evaluations_follow_each_agents_contract():
    sorl, fql, bc = get_agent("sorl"), get_agent("fql"), get_agent("bc")
    assert network_evaluations(sorl, 8, 1) == 8 and network_evaluations(sorl, 8, 4) == 32 + 4
    assert network_evaluations(get_agent("ifql"), 10, 32) == 352
    assert network_evaluations(fql, 8, 4) == 4 + 4  # K cannot change a one-step policy's action (GRID_NOTES)
    assert network_evaluations(bc, 8, 4) == 1  # nor N a policy without a critic: one sample, no critic call
    assert network_evaluations(None, 2, 3) == 2 * 3 + 3  # an agent not registered: every axis counts
    assert plots.compute_frontier([(1, 10.0, "a"), (4, 5.0, "b"), (4, 20.0, "c"), (8, 15.0, "d")]) == [
        (1, 10.0, "a"),
        (4, 20.0, "c"),
    ]


def test_every_agent_of_a_study_is_drawn_on_one_frontier(tmp_path, monkeypatch):
    """Three agents: the compute-all figure has one labelled marker series per agent at the right x values, its
    legend entry naming the agent's runs, and a frontier line per agent (before, one figure per method and none
    with every agent)."""
    for agent, cells in STUDY.items():
        for seed in (1, 2):
            write_run(tmp_path / "runs", "cube-single-play-task1", agent, seed, cells, curves=False)
    figures = {}
    real_finish = plots._finish_figure

    def keep(plt, fig, title, heading, y, stem, formats):
        figures[stem.name] = [(line.get_label(), sorted(line.get_xdata())) for line in fig.axes[0].get_lines()]
        return real_finish(plt, fig, title, heading, y, stem, formats)

    monkeypatch.setattr(plots, "_finish_figure", keep)
    cli.main(["plot", "compute", str(tmp_path / "runs"), "--out", str(tmp_path / "plots"), "--formats", "png",
              "--reps", "100"])  # fmt: skip
    assert (tmp_path / "plots" / "compute-all.png").stat().st_size > 5_000
    assert {f"compute-{a}" for a in STUDY} | {"compute-all"} == set(figures)
    series = {label: set(x) for label, x in figures["compute-all"] if not label.startswith("_")}
    # each legend entry names that method's own runs: a study's methods may have different seeds so far
    assert series == {f"{agent}: 1 task × 2 seeds": costs for agent, costs in COSTS.items()}
    frontiers = [x for label, x in figures["compute-all"] if label == "_frontier"]
    assert len(frontiers) == 3
    assert sorted(figures["compute-ifql"][0][1]) == [1] and ("frontier", [1, 352]) in figures["compute-ifql"]


def test_the_per_method_figure_uses_the_same_costs(tmp_path):
    write_run(tmp_path, "cube-single-play-task1", "fql", 1, STUDY["fql"], curves=False)
    written = plots.plot_compute([tmp_path], tmp_path / "plots", formats=["png"], reps=100)
    assert [p.name for p in written] == ["compute-fql.png", "compute-all.png"]
    with pytest.raises(Exception, match="png and/or pdf"):
        plots.plot_compute([tmp_path], tmp_path / "plots", formats=["gif"])

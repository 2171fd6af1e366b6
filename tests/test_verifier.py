"""The Q-verifier probe (`sorl verifier`): rank correlation, the state copies its rollouts start from, the summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from envs.datasets import make_env
from experiments import verifier
from sorl.errors import SorlError


def test_spearman_known_cases():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert verifier._spearman(x, 10 * x + 3) == pytest.approx(1.0)
    assert verifier._spearman(x, -(x**3)) == pytest.approx(-1.0)  # monotone, not linear: still -1
    assert verifier._spearman(x, np.ones(4)) is None  # nothing to rank
    # ties take their mean rank: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3)
    r = verifier._spearman(np.array([1.0, 2.0, 2.0, 3.0]), x)
    assert r == pytest.approx(np.corrcoef([0, 1.5, 1.5, 3], [0, 1, 2, 3])[0, 1])


@pytest.mark.parametrize("task", ["cube-single-play-singletask-task1-v0", "scene-play-singletask-task1-v0"])
def test_a_copy_put_in_the_probe_state_continues_exactly_as_the_original(task):
    rng = np.random.default_rng(0)
    original, copy = make_env(task, success_timing="post"), make_env(task, success_timing="post")
    original.reset(seed=5)
    for _ in range(20):
        original.step(rng.uniform(-1, 1, original.action_space.shape))
    state = verifier._physics_state(original)
    copy.reset(seed=5)
    copy.step(rng.uniform(-1, 1, copy.action_space.shape))  # somewhere else first
    verifier._set_physics_state(copy, state)
    for _ in range(5):
        a = rng.uniform(-1, 1, original.action_space.shape)
        ob_a, r_a, *_ = original.step(a)
        ob_b, r_b, *_ = copy.step(a)
        np.testing.assert_allclose(ob_a, ob_b, atol=1e-6)
        assert r_a == r_b


def test_summary_of_known_records():
    records = [
        verifier._state_record(0, np.array([3.0, 1.0, 2.0]), np.array([-1.0, -5.0, -3.0]), np.array([1, 0, 0])),
        verifier._state_record(25, np.array([0.0, 1.0, 2.0]), np.array([-1.0, -1.0, -1.0]), np.array([1, 1, 1])),
    ]
    s = verifier.summarize(records)
    assert s["states"] == 2 and s["states_ranked"] == 1  # the second state's returns are all equal
    assert s["spearman_mean"] == pytest.approx(1.0)
    assert s["success_argmax_q"] == 1.0 and s["success_mean_candidate"] == pytest.approx((1 / 3 + 1) / 2)
    assert s["success_best_candidate"] == 1.0
    assert s["q_mean"] == pytest.approx(1.5) and s["mc_return_mean"] == pytest.approx((-3 - 1) / 2)
    assert s["overestimation"] == pytest.approx(1.5 + 2)


def test_probe_of_a_tiny_sorl_run(tiny_sorl_run):
    run, _, task = tiny_sorl_run
    record = verifier.verifier_quality(run, K=2, N=3, states=2, probe_steps=(0, 4))
    assert record["K"] == 2 and record["N"] == 3 and record["step"] == 20 and len(record["states"]) == 2
    assert [s["t"] for s in record["states"]] == [0, 4]
    for s in record["states"]:
        assert len(s["q"]) == len(s["mc_return"]) == len(s["success"]) == 3
        best = int(np.argmax(s["q"]))
        assert s["argmax_return"] == pytest.approx(s["mc_return"][best]) and s["argmax_success"] == s["success"][best]
        # a -1-per-step reward discounted over at most the episode's length bounds every return
        assert all(-1 / (1 - record["discount"]) <= r <= 0 for r in s["mc_return"])
    path = verifier.write_verifier(run, record)
    assert json.loads(path.read_text())["summary"]["states"] == 2
    table = verifier.format_verifier([run])
    assert f"{task} sorl seed 1 | 20 | 2 | 3 | 2 |" in table


def test_a_run_without_a_verifier_is_refused(tmp_path):
    with pytest.raises(SorlError, match="no verifier.json"):
        verifier.format_verifier([tmp_path])

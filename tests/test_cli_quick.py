"""`sorl train --quick`: the README's main job fills in a small budget, but never overrides what the user gave."""

from cli.main import QUICK_AGENT_PRESET, QUICK_PRESET, TrainArgs, apply_quick_preset


def test_quick_preset_fills_defaults_only():
    args, overrides = apply_quick_preset(TrainArgs(task="cube-single-play", steps=500, quick=True), {"alpha": "3"})
    assert args.steps == 500  # given explicitly: kept
    assert args.eval_episodes == QUICK_PRESET["eval_episodes"] != TrainArgs(task="x").eval_episodes
    assert args.train_episodes == QUICK_PRESET["train_episodes"]
    assert overrides == {**QUICK_AGENT_PRESET, "alpha": "3"}


def test_explicit_agent_override_beats_preset():
    _, overrides = apply_quick_preset(TrainArgs(task="t", quick=True), {"actor_layer_size": "64"})
    assert overrides["actor_layer_size"] == "64"
    assert overrides["value_layer_size"] == QUICK_AGENT_PRESET["value_layer_size"]

"""Pixel-based (visual-*) tasks: generated data in OGBench's format, uint8 on the device, frame stacking at episode
starts, random-shift augmentation, image encoders in every agent, evaluation with stacked rendered frames, and a tiny
end-to-end visual SORL run.

Tiny datasets only (2 training episodes of 10 steps), generated into tmp directories. Rendering runs on this
machine's headless OpenGL (`envs.rendering`): the tests that render are skipped, with the reason, where none works.
"""

from __future__ import annotations

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import AGENTS
from cli import main as cli
from envs import checks, datasets, manifest
from envs.registry import (
    ENVIRONMENTS,
    agent_env_settings,
    resolve_env,
    resolve_task,
    settings_source,
)
from runner.pixels import FrameStack, example_observation, pipeline
from runner.settings import TrainSettings
from runner.video import check_video_size
from sorl.data import (
    AUG_PAD,
    Sampling,
    compact_pixel_dataset,
    dataset_nbytes,
    dataset_size,
    maybe_augment,
    sample_batch,
    stack_frames,
    to_device,
)
from sorl.errors import SorlError
from sorl.networks import ENCODERS, unflatten_frames

ENV = "visual-cube-single-play"
EPISODES, STEPS = 2, 10
pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered:UserWarning")


def _renders() -> str | None:
    from envs.rendering import gl_backend

    try:
        gl_backend()
    except SorlError as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny visual-cube-single dataset and its state twin's, same seed, rendered in one spawned worker."""
    why = _renders()
    if why:
        pytest.skip(why)
    d = tmp_path_factory.mktemp("pixels")
    datasets.cli_generate([ENV, "cube-single-play"], episodes=EPISODES, workers=1, seed=0, data_dir=d,
                          max_episode_steps=STEPS, progress=False)  # fmt: skip
    return d


# ------------------------------------------------------------------------------------------------ registry


def test_every_manipulation_environment_has_a_visual_twin():
    state = [s for s in ENVIRONMENTS.values() if s.family in ("cube", "scene", "puzzle") and not s.pixels]
    for s in state:
        v = ENVIRONMENTS[f"visual-{s.name}"]
        assert v.pixels and v.state_twin == s.name and v.family == s.family and v.generatable
        assert v.env_id == f"visual-{s.env_id}" and v.default_task == s.default_task
        assert (v.published_episodes, v.max_episode_steps) == (s.published_episodes, s.max_episode_steps)
    assert resolve_task("visual-cube-single-play-task1").name == "visual-cube-single-play-singletask-task1-v0"
    assert not any(s.pixels for s in ENVIRONMENTS.values() if s.family not in ("cube", "scene", "puzzle"))


def test_pixel_settings_name_their_source():
    # The FQL README's pixel commands: verified; everything else is marked unverified.
    fql, rebrac, iql, sorl = (AGENTS[n] for n in ("fql", "rebrac", "iql", "sorl"))
    assert agent_env_settings(fql, "visual-cube-double-play")["alpha"] == 100.0
    assert settings_source(fql, "visual-cube-double-play")[0]
    assert agent_env_settings(rebrac, ENV) == dict(
        alpha_actor=1.0, alpha_critic=0.0, discount=0.99, encoder="impala_small"
    )
    assert settings_source(iql, ENV)[0] and not settings_source(iql, "visual-scene-play")[0]
    assert agent_env_settings(sorl, ENV)["q_loss_coef"] == 10 and not settings_source(sorl, ENV)[0]
    for cls in AGENTS.values():
        pixel_envs = [s.name for s in ENVIRONMENTS.values() if s.pixels]
        assert all(agent_env_settings(cls, name)["encoder"] == "impala_small" for name in pixel_envs)
    assert "encoder" not in agent_env_settings(sorl, "cube-single-play")  # state tasks unchanged


def test_pipeline_defaults_and_refusals():
    from agents.sorl import SORLConfig

    pix, state = resolve_env(ENV), resolve_env("cube-single-play")
    enc = SORLConfig(encoder="impala_small")
    s = pipeline(pix, TrainSettings(), enc)
    assert (s.frame_stack, s.p_aug, s.image_shape) == (3, 0.5, (64, 64, 3))
    assert pipeline(state, TrainSettings(), SORLConfig()).plain  # state tasks: today's sampler
    assert pipeline(pix, TrainSettings(frame_stack=1, p_aug=0.0), enc).plain
    with pytest.raises(SorlError, match="encoder"):
        pipeline(pix, TrainSettings(), SORLConfig())
    with pytest.raises(SorlError, match="p-aug"):
        pipeline(state, TrainSettings(p_aug=0.5), SORLConfig())
    with pytest.raises(SorlError, match="online"):
        pipeline(pix, TrainSettings(online_steps=10), enc)
    # videos of a pixel task enlarge its 64x64 camera by a whole factor: a size that is not one is refused up front
    assert pipeline(pix, TrainSettings(video_episodes=1, video_size=128), enc).frame_stack == 3
    with pytest.raises(SorlError, match="multiple of 64"):
        pipeline(pix, TrainSettings(video_episodes=1, video_size=96), enc)
    check_video_size(96)  # a state task's video renders at any H.264 size
    with pytest.raises(SorlError, match="probability"):
        TrainSettings(p_aug=1.5).validate()


# -------------------------------------------------------------------------------------------------- data


def test_generated_visual_files_have_published_format(data):
    spec = resolve_env(ENV)
    train, val = datasets.dataset_paths(spec, data)
    for path, episodes in ((train, EPISODES), (val, 1)):
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        assert set(arrays) == {"observations", "actions", "terminals", "qpos", "qvel"}
        assert arrays["observations"].dtype == np.uint8
        assert arrays["observations"].shape == (episodes * STEPS, 64, 64, 3)
        assert arrays["actions"].dtype == np.float32 and arrays["terminals"].dtype == np.bool_
        assert np.flatnonzero(arrays["terminals"]).tolist() == [STEPS * (i + 1) - 1 for i in range(episodes)]
        assert arrays["observations"].std() > 0  # rendered, not blank
        assert checks.check_full(spec, path) == []
    entry = manifest.entries(data)[train.name]
    assert entry["status"] == "complete" and entry["provenance"] == "generated"
    # The oracles act on the privileged state: the same trajectories as the state twin's dataset of that seed.
    with np.load(train) as v, np.load(datasets.dataset_paths("cube-single-play", data)[0]) as s:
        for key in ("actions", "qpos", "qvel", "terminals"):
            np.testing.assert_array_equal(v[key], s[key])


@pytest.mark.parametrize("env", ["visual-scene-play", "visual-puzzle-3x3-play"])
def test_visual_scene_and_puzzle_generate_their_twins_trajectories(env, tmp_path):
    """The other visual families: OGBench's file keys (with the buttons' states), rendered frames, and the state
    twin's trajectories of the same seed."""
    why = _renders()
    if why:
        pytest.skip(why)
    spec, steps = resolve_env(env), 6
    datasets.cli_generate([env, spec.state_twin], episodes=1, workers=1, seed=3, data_dir=tmp_path,
                          max_episode_steps=steps, progress=False)  # fmt: skip
    path = datasets.dataset_paths(spec, tmp_path)[0]
    with np.load(path) as v, np.load(datasets.dataset_paths(spec.state_twin, tmp_path)[0]) as s:
        assert set(v.files) == set(s.files)  # the same keys, observations rendered
        assert "button_states" in v.files
        assert v["observations"].dtype == np.uint8 and v["observations"].shape == (steps, 64, 64, 3)
        assert v["observations"].std() > 0
        for key in sorted(set(v.files) - {"observations"}):
            np.testing.assert_array_equal(v[key], s[key], err_msg=key)
    assert checks.check_full(spec, path) == []


def test_visual_dataset_loads_uint8_and_stays_uint8_on_the_device(data):
    import ogbench

    env, train, val = datasets.load_task(ENV, data, generate=False, progress=False)
    n = EPISODES * (STEPS - 1)  # transitions: each episode's last frame has no next one
    # every frame once (compact): the transitions are exactly those of ogbench's regular layout
    assert train["observations"].dtype == np.uint8 and train["observations"].shape == (EPISODES * STEPS, 64, 64, 3)
    assert "next_observations" not in train and train["frame_rows"].shape == (n,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        regular, _ = ogbench.make_env_and_datasets(
            f"{ENV}-singletask-task1-v0",
            dataset_path=str(datasets.dataset_paths(ENV, data)[0]), dataset_only=True, cur_env=env,
        )  # fmt: skip
    env.close()
    rows = train["frame_rows"]
    np.testing.assert_array_equal(train["observations"][rows], regular["observations"])
    np.testing.assert_array_equal(train["observations"][rows + 1], regular["next_observations"])
    for key in ("actions", "rewards", "masks", "terminals"):
        np.testing.assert_array_equal(train[key], regular[key].astype(np.float32), err_msg=key)
    assert train["rewards"].dtype == np.float32 and val["frame_rows"].shape == (len(val["actions"]),)

    ds = to_device(train, frame_stack=3)
    assert ds["observations"].dtype == jnp.uint8 and ds["observations"].shape == (EPISODES * STEPS, 64 * 64 * 3)
    assert ds["actions"].dtype == jnp.float32 and dataset_size(ds) == n
    # the episode's first frame row, per transition
    assert ds["episode_starts"].tolist() == [0] * (STEPS - 1) + [STEPS] * (STEPS - 1)
    batch = sample_batch(ds, jax.random.PRNGKey(0), 8, Sampling(3, 0.5, (64, 64, 3)))
    assert batch["observations"].dtype == jnp.uint8 and batch["observations"].shape == (8, 3 * 64 * 64 * 3)
    assert batch["next_observations"].shape == (8, 3 * 64 * 64 * 3)
    assert "episode_starts" not in batch and "frame_rows" not in batch
    # a published file placed in the data directory (one we did not write) is used as it is
    other = data.parent / "published"
    other.mkdir(exist_ok=True)
    for p in datasets.dataset_paths(ENV, data):
        (other / p.name).write_bytes(p.read_bytes())
    datasets.ensure_dataset(ENV, other, generate=False)
    assert manifest.entries(other)[f"{resolve_env(ENV).dataset_name}.npz"]["provenance"] == "published"


# --------------------------------------------------------------------------------- frame stacking, shifts


def _indexed_frames(n: int) -> np.ndarray:
    """`n` 64x64x3 frames, frame i filled with the value i (so a stacked observation names its frames)."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 64, 64, 3)).copy()


def test_frame_stacking_repeats_the_first_frame_at_episode_starts():
    n, ends = 12, (4, 8, 11)  # episodes 0-4, 5-8, 9-11
    obs = _indexed_frames(n)
    data = {
        "observations": obs,
        "next_observations": (obs.astype(np.int64) + 100).astype(np.uint8),  # o'[t] = 100 + t: distinguishable
        "actions": np.zeros((n, 2), np.float32),
        "rewards": np.zeros(n, np.float32),
        "masks": np.ones(n, np.float32),
        "terminals": np.isin(np.arange(n), ends).astype(np.float32),
    }
    ds = to_device(data, frame_stack=3)
    start = {t: 0 if t <= 4 else 5 if t <= 8 else 9 for t in range(n)}
    idx = jnp.arange(n)
    got = stack_frames(ds, idx, ds["next_observations"], 3)
    frame = 64 * 64 * 3
    for t in range(n):
        o = np.asarray(got["observations"][t]).reshape(3, frame)[:, 0].tolist()
        o2 = np.asarray(got["next_observations"][t]).reshape(3, frame)[:, 0].tolist()
        s = start[t]
        assert o == [max(t - 2, s), max(t - 1, s), t], t
        assert o2 == [max(t - 1, s), t, 100 + t], t
    # the sampler draws the same stacks (identified by their last frame)
    batch = sample_batch(ds, jax.random.PRNGKey(3), 64, Sampling(frame_stack=3))
    for row in np.asarray(batch["observations"]).reshape(64, 3, frame)[:, :, 0]:
        t = int(row[-1])
        assert row.tolist() == [max(t - 2, start[t]), max(t - 1, start[t]), t]


def _episodes(lengths: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """OGBench's compact layout of episodes with these numbers of frames: random frames and per-row keys."""
    rng = np.random.default_rng(seed)
    m = sum(lengths)
    last = np.cumsum(lengths) - 1
    return {
        "observations": rng.integers(0, 256, (m, 64, 64, 3), dtype=np.uint8),
        "actions": rng.uniform(-1, 1, (m, 2)).astype(np.float32),
        "rewards": rng.uniform(-1, 0, m).astype(np.float32),
        "masks": (rng.random(m) > 0.2).astype(np.float32),
        "valids": (~np.isin(np.arange(m), last)).astype(np.float32),
        "terminals": np.isin(np.arange(m), np.concatenate([last, last - 1])).astype(np.float32),
    }


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(3, 0.0, (64, 64, 3)), Sampling(3, 1.0, (64, 64, 3))])
def test_compact_frames_give_the_batches_of_separate_next_observations(sampling):
    """Every frame stored once gives, key for key and draw for draw, the batches of the regular layout (OGBench's
    `compact_dataset=False`: the observations and a second array of next observations)."""
    ogb = _episodes((5, 2, 7))
    compact = compact_pixel_dataset(ogb)
    valid = ogb["valids"] > 0
    regular = {k: ogb[k][valid] for k in ("observations", "actions", "rewards", "masks")}
    regular["next_observations"] = ogb["observations"][np.flatnonzero(valid) + 1]
    regular["terminals"] = np.isin(np.arange(valid.sum()), [3, 4, 10]).astype(np.float32)  # episodes' last steps
    np.testing.assert_array_equal(compact["terminals"], regular["terminals"])
    a = to_device(compact, frame_stack=sampling.frame_stack)
    b = to_device(regular, frame_stack=sampling.frame_stack)
    assert dataset_size(a) == dataset_size(b) == 11
    # frames: 14 stored instead of 22 (11 observations + 11 next observations)
    assert a["observations"].shape[0] == 14 and dataset_nbytes(a) < 0.7 * dataset_nbytes(b)
    for key in (0, 1, 2):
        got = sample_batch(a, jax.random.PRNGKey(key), 32, sampling)
        want = sample_batch(b, jax.random.PRNGKey(key), 32, sampling)
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _shift_of(out: np.ndarray, img: np.ndarray, pad: int) -> tuple[int, int] | None:
    """The (dy, dx), |dy|, |dx| <= pad, with out[y, x] = img[clip(y + dy), clip(x + dx)] (edge padding), if any."""
    H, W = img.shape[:2]
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            ys = np.clip(np.arange(H) + dy, 0, H - 1)
            xs = np.clip(np.arange(W) + dx, 0, W - 1)
            if np.array_equal(out, img[ys][:, xs]):
                return dy, dx
    return None


def test_augmentation_is_a_shift_by_at_most_the_pad():
    rng = np.random.default_rng(0)
    B, F = 16, 2
    frames = rng.integers(0, 256, (B, F, 64, 64, 3), dtype=np.uint8)
    nxt = rng.integers(0, 256, (B, F, 64, 64, 3), dtype=np.uint8)
    batch = {
        "observations": jnp.asarray(frames.reshape(B, -1)),
        "next_observations": jnp.asarray(nxt.reshape(B, -1)),
        "actions": jnp.zeros((B, 2)),
    }
    out = maybe_augment(batch, jax.random.PRNGKey(0), 1.0, (64, 64, 3))
    o = np.asarray(out["observations"]).reshape(B, F, 64, 64, 3)
    o2 = np.asarray(out["next_observations"]).reshape(B, F, 64, 64, 3)
    assert o.dtype == np.uint8
    shifts = []
    for b in range(B):
        found = {_shift_of(o[b, f], frames[b, f], AUG_PAD) for f in range(F)}
        found |= {_shift_of(o2[b, f], nxt[b, f], AUG_PAD) for f in range(F)}
        assert len(found) == 1 and None not in found, found  # one shift for every image of the transition
        shifts.append(found.pop())
    assert len(set(shifts)) > 1  # drawn per transition
    assert all(max(abs(dy), abs(dx)) <= AUG_PAD for dy, dx in shifts)
    np.testing.assert_array_equal(out["actions"], batch["actions"])
    # p_aug = 0: never shifted
    same = maybe_augment(batch, jax.random.PRNGKey(0), 0.0, (64, 64, 3))
    np.testing.assert_array_equal(same["observations"], batch["observations"])


# ----------------------------------------------------------------------------------------------- encoders


def test_unflatten_frames_stacks_frames_on_the_channel_axis_as_the_reference():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 3, 64, 64, 3), dtype=np.uint8)
    got = np.asarray(unflatten_frames(jnp.asarray(frames.reshape(2, -1))))
    np.testing.assert_array_equal(got, np.concatenate([frames[:, i] for i in range(3)], axis=-1))


def test_impala_small_encoder_shapes_and_scaling():
    # The reference's definitions, parameter counts and gradients: tests/test_encoders.py.
    x = jnp.asarray(np.random.default_rng(2).integers(0, 256, (2, 3 * 64 * 64 * 3), dtype=np.uint8))
    enc = ENCODERS["impala_small"]()
    params = jax.eval_shape(enc.init, jax.random.PRNGKey(0), x)["params"]  # shapes only: nothing compiled
    assert sorted(params) == ["MLP_0", "stack_blocks_0", "stack_blocks_1", "stack_blocks_2"]
    assert params["stack_blocks_0"]["Conv_0"]["kernel"].shape == (3, 3, 9, 16)  # 3 frames x RGB
    assert sorted(params["stack_blocks_0"]) == ["Conv_0", "Conv_1", "Conv_2"]  # small: one residual block per stack
    assert params["MLP_0"]["Dense_0"]["kernel"].shape == (8 * 8 * 32, 512)  # three 2x poolings of 64x64
    assert jax.eval_shape(enc.apply, {"params": params}, x).shape == (2, 512)
    tiny = ENCODERS["impala_debug"]()
    p = tiny.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(tiny.apply(p, x), tiny.apply(p, x.astype(jnp.float32)), rtol=1e-6)  # /255 inside


@pytest.mark.parametrize("name", list(AGENTS))
def test_every_agent_gives_each_network_its_own_encoder(name):
    import dataclasses

    from agents import get_agent

    cls = get_agent(name)
    small = dict(batch_size=4, actor_layer_size=8, actor_num_layers=1, value_layer_size=8, value_num_layers=1)
    small |= dict(denoise_timesteps=2, max_k_backprop=2, flow_steps=2)  # fewer sampler steps to compile
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    config = dataclasses.replace(
        cls.Config(), encoder="impala_debug", **{k: v for k, v in small.items() if k in fields}
    )
    obs = np.random.default_rng(0).integers(0, 256, (4, 2 * 64 * 64 * 3), dtype=np.uint8)
    agent = cls.create(0, obs[:1].astype(np.float32), np.zeros((1, 5), np.float32), config)
    for net, params in agent.params.items():
        assert "encoder" in params, (name, net)  # one encoder module per network
    encoders = [p["encoder"] for p in agent.params.values()]
    if len(encoders) > 1:  # independently initialised, not shared
        assert not np.allclose(encoders[0]["MLP_0"]["Dense_0"]["kernel"], encoders[1]["MLP_0"]["Dense_0"]["kernel"])
    batch = {
        "observations": jnp.asarray(obs),
        "next_observations": jnp.asarray(obs[::-1]),
        "actions": jnp.zeros((4, 5)),
        "rewards": jnp.zeros(4),
        "masks": jnp.ones(4),
    }
    batch = dict(cls.prepare_dataset(batch))
    new, info = jax.jit(lambda a, b: a.update(b))(agent, batch)
    assert all(np.isfinite(float(v)) for v in info.values())
    actions = new.sample_actions(jnp.asarray(obs), jax.random.PRNGKey(1))
    assert actions.shape == (4, 5) and bool(jnp.all(jnp.abs(actions) <= 1))


# ------------------------------------------------------------------------------------- evaluation, e2e


class _Counter:
    """A fake environment whose observation is the step count, as a 2-vector."""

    def __init__(self):
        import gymnasium

        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1, 1, (1,), np.float32)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.full(2, 0.0, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(2, float(self.t), np.float32), 0.0, False, False, {}

    def close(self):
        pass


def test_evaluation_frame_stack_repeats_the_reset_observation():
    env = FrameStack(_Counter(), 3)
    assert env.observation_space.shape == (6,)
    ob, _ = env.reset(seed=0)
    assert ob.tolist() == [0, 0, 0, 0, 0, 0]
    env.step(np.zeros(1))
    ob = env.step(np.zeros(1))[0]
    assert ob.tolist() == [0, 0, 1, 1, 2, 2]  # oldest first, as the training batches
    assert example_observation(np.ones((5, 2)), 3).shape == (1, 6)


# decoding the video starts ffmpeg from this process, which runs JAX: JAX's fork warning is about the test
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")
def test_tiny_visual_sorl_run_writes_results(data, tmp_path):
    from runner.train import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = train(
            f"{ENV}-task1", "sorl", run_dir=tmp_path / "run", data_dir=data, steps=2, log_interval=2,
            eval_interval=2, eval_episodes=1, eval_K="1", eval_max_episode_steps=2, eval_workers=1, progress=False,
            agent_overrides=dict(
                actor_layer_size="8", actor_num_layers="1", value_layer_size="8", value_num_layers="1",
                batch_size="4", denoise_timesteps="2", max_k_backprop="2", encoder="impala_debug",
            ),
        )  # fmt: skip
    assert (tmp_path / "run" / "results.json").is_file() and results["status"] == "complete"
    assert [(r["K"], r["episodes"]) for r in results["final"]] == [(1, 1)] and 0 <= results["final"][0]["success"] <= 1
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["train"]["frame_stack"] == 3 and cfg["train"]["p_aug"] == 0.5
    assert cfg["agent_config"]["encoder"] == "impala_debug" and cfg["env_settings"]["encoder"] == "impala_small"
    assert cfg["obs_dim"] == 3 * 64 * 64 * 3 and cfg["dataset"]["bytes"] < 2 * 64 * 64 * 3 * 20 * 2

    # After training, `sorl eval` and its videos stack and render frames as the training's evaluation did.
    run = tmp_path / "run"
    cli.main(
        ["eval", str(run), "--K", "1", "--N", "1,2", "--episodes", "1", "--max-episode-steps", "2", "--workers", "1",
         "--video-episodes", "1", "--video-size", "128"]
    )  # fmt: skip
    scaling = json.loads((run / "scaling.json").read_text())
    assert [(c["K"], c["N"], c["episodes"]) for c in scaling["grid"]] == [(1, 1, 1), (1, 2, 1)]
    (video,) = (run / "videos").iterdir()
    frames = _frames(video)
    # the agent's 64x64 camera, each pixel a 2x2 block: the reset frame and one per step
    assert frames.shape == (3, 128, 128, 3) and frames[0].std() > 10
    blocks = frames[0].astype(np.int16).reshape(64, 2, 64, 2, 3)
    assert np.abs(blocks - blocks[:, :1, :, :1]).mean() < 3  # lossy coding blurs the blocks' edges a little

    # the verifier restarts rollouts from a physics state, which holds no frames: one line, nothing written
    from experiments.verifier import verifier_quality

    with pytest.raises(SorlError, match="state observations only"):
        verifier_quality(run, K=1, N=2, states=1)
    assert not (run / "verifier.json").exists()


def _frames(path) -> np.ndarray:
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        return np.stack([frame for frame in reader])

"""The diffusion and consistency samplers (`sorl.diffusion`, `sorl.consistency`): schedules against closed forms
computed here, the samplers with exact (analytic) denoisers for Gaussian data, and tiny networks trained with each
loss on a two-mode 1-D mixture."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sorl import consistency, diffusion
from sorl.errors import SorlError
from sorl.inference import sample_best_of_n
from sorl.networks import MLP

# Gaussian data N(M, S^2) for the analytic denoisers; the mixture 0.5 N(-0.5, 0.1^2) + 0.5 N(0.5, 0.1^2).
M, S = 0.3, 0.2
MODE, MODE_STD = 0.5, 0.1
MIX_MEAN, MIX_VAR = 0.0, MODE**2 + MODE_STD**2  # 0 and 0.26


# ------------------------------------------------------------------------------------------------ schedules


def test_vp_schedule_closed_form():
    # alpha_bar_t = exp(-b_min t/T - (b_max - b_min) (t/T)^2 / 2), b_min = 0.1, b_max = 10; entry i is t = i + 1.
    T = 10
    sched = diffusion.vp_schedule(T)
    assert sched.T == T
    ab = np.asarray(sched.alpha_bars)
    np.testing.assert_allclose(ab[0], math.exp(-0.1 * 0.1 - 0.5 * 9.9 * 0.01), rtol=1e-5)  # t = 1
    np.testing.assert_allclose(ab[T // 2 - 1], math.exp(-0.1 * 0.5 - 0.5 * 9.9 * 0.25), rtol=1e-5)  # t = T/2
    np.testing.assert_allclose(ab[T - 1], math.exp(-5.05), rtol=1e-5)  # t = T: exp(-(b_min + b_max)/2) for any T
    np.testing.assert_allclose(diffusion.vp_schedule(3).alpha_bars[-1], math.exp(-5.05), rtol=1e-5)
    betas = np.asarray(sched.betas)
    assert np.all(betas > 0) and np.all(betas < 1)
    np.testing.assert_allclose(np.asarray(sched.alphas), 1 - betas, rtol=1e-6)
    np.testing.assert_allclose(ab, np.cumprod(1 - betas), rtol=1e-5)
    assert np.all(np.diff(ab) < 0)


def test_cosine_schedule_closed_form():
    # alpha_bar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2), s = 0.008; the last beta is clipped at 0.999.
    T, s = 10, 0.008

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    sched = diffusion.cosine_schedule(T)
    ab = np.asarray(sched.alpha_bars)
    np.testing.assert_allclose(ab[0], f(1) / f(0), rtol=1e-5)
    np.testing.assert_allclose(ab[T // 2 - 1], f(T / 2) / f(0), rtol=1e-5)  # ~0.4938, by hand
    np.testing.assert_allclose(ab[T // 2 - 1], 0.49376, rtol=1e-3)
    np.testing.assert_allclose(ab[T - 1], f(T - 1) / f(0) * (1 - 0.999), rtol=1e-4)  # f(T) = 0: beta_T clipped
    betas = np.asarray(sched.betas)
    assert np.all(betas > 0) and np.all(betas <= 0.999 + 1e-7)
    np.testing.assert_allclose(betas[-1], 0.999, rtol=1e-6)
    assert np.all(np.diff(ab) < 0)


def test_linear_schedule_and_make_schedule():
    sched = diffusion.make_schedule("linear", 5)
    np.testing.assert_allclose(np.asarray(sched.betas), np.linspace(1e-4, 2e-2, 5), rtol=1e-5)
    for name in diffusion.SCHEDULES:
        assert diffusion.make_schedule(name, 4).T == 4
    with pytest.raises(SorlError, match="unknown beta schedule"):
        diffusion.make_schedule("sigmoid", 5)
    with pytest.raises(SorlError, match="T must be an integer >= 1"):
        diffusion.make_schedule("vp", 0)


# -------------------------------------------------------------------------------------------- forward, loss


def test_forward_noising_marginal():
    sched = diffusion.vp_schedule(10)
    x0 = jnp.full((200_000, 1), 0.7)
    noise = jax.random.normal(jax.random.PRNGKey(0), x0.shape)
    for t in (0, 4, 9):
        ab = float(sched.alpha_bars[t])
        x_t = np.asarray(diffusion.q_sample(sched, x0, t, noise))
        np.testing.assert_allclose(x_t.mean(), math.sqrt(ab) * 0.7, atol=0.01)
        np.testing.assert_allclose(x_t.var(), 1 - ab, rtol=0.02)
    # Per-example steps, as a [B] vector or a [B, 1] column.
    t = jnp.array([0, 9])
    out = diffusion.q_sample(sched, jnp.ones((2, 3)), t, jnp.zeros((2, 3)))
    np.testing.assert_allclose(np.asarray(out), np.sqrt(np.asarray(sched.alpha_bars)[[0, 9]])[:, None] * np.ones(3))
    np.testing.assert_allclose(diffusion.q_sample(sched, jnp.ones((2, 3)), t[:, None], jnp.zeros((2, 3))), out)


def test_ddpm_loss_is_zero_for_the_true_noise_and_weighted():
    # Data is the point 0.4: from x_t and t the noise is (x_t - sqrt(ab_t) 0.4) / sqrt(1 - ab_t), exactly.
    sched = diffusion.cosine_schedule(8)
    x0 = jnp.full((64, 2), 0.4)
    obs = jnp.zeros((64, 3))

    def true_eps(o, x, t):
        assert t.shape == (64, 1)
        ab = sched.alpha_bars[t[:, 0].astype(jnp.int32)][:, None]
        return (x - jnp.sqrt(ab) * 0.4) / jnp.sqrt(1 - ab)

    assert float(diffusion.ddpm_loss(true_eps, sched, obs, x0, jax.random.PRNGKey(1))) < 1e-6
    # With eps = 0 the loss is E ||noise||^2 = action_dim, summed over dimensions; weights scale each example.
    zero = lambda o, x, t: jnp.zeros_like(x)  # noqa: E731
    np.testing.assert_allclose(diffusion.ddpm_loss(zero, sched, obs, jnp.zeros((64, 2)) + 0.4, jax.random.PRNGKey(2)),
                               2.0, rtol=0.25)  # fmt: skip
    w = jnp.zeros(64).at[:32].set(2.0)
    loss_w = diffusion.ddpm_loss(zero, sched, obs, x0, jax.random.PRNGKey(2), weights=w)
    key = jax.random.split(jax.random.PRNGKey(2))[1]
    noise = jax.random.normal(key, x0.shape)
    np.testing.assert_allclose(loss_w, (2.0 * (noise[:32] ** 2).sum(-1)).sum() / 64, rtol=1e-5)


# ---------------------------------------------------------------------------------- sampler, exact denoiser


def gaussian_eps(sched: diffusion.Schedule):
    """The exact noise prediction for data N(M, S^2):
    E[noise | x_t] = sqrt(1 - ab) (x - sqrt(ab) M) / (ab S^2 + 1 - ab)."""

    def eps_fn(obs, x, t):
        ab = sched.alpha_bars[t[..., 0].astype(jnp.int32)][..., None]
        return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * M) / (ab * S**2 + 1 - ab)

    return eps_fn


def test_sampling_timesteps_and_respacing():
    np.testing.assert_array_equal(diffusion.sampling_timesteps(5, 5), np.arange(5))
    np.testing.assert_array_equal(diffusion.sampling_timesteps(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(diffusion.sampling_timesteps(10, 1), [9])
    for bad in (0, 11, True, 2.0):
        with pytest.raises(SorlError, match="1 <= K <= 10"):
            diffusion.sampling_timesteps(10, bad)
    sched = diffusion.vp_schedule(10)
    assert diffusion.respaced(sched, np.arange(10)) is sched
    sub = diffusion.respaced(sched, np.array([0, 3, 6, 9]))
    np.testing.assert_allclose(sub.alpha_bars, sched.alpha_bars[np.array([0, 3, 6, 9])], rtol=1e-6)
    np.testing.assert_allclose(np.cumprod(np.asarray(sub.alphas)), sub.alpha_bars, rtol=1e-5)
    np.testing.assert_allclose(sub.betas, 1 - sub.alphas, rtol=1e-6)


@pytest.mark.parametrize(
    ("schedule", "K", "method", "std_rtol"),
    [("vp", 100, "ddpm", 0.05), ("cosine", 100, "ddpm", 0.05), ("cosine", 100, "ddim", 0.05),
     ("cosine", 50, "ddpm", 0.08), ("cosine", 50, "ddim", 0.08)],
)  # fmt: skip
def test_reverse_steps_with_the_exact_eps_recover_the_gaussian(schedule, K, method, std_rtol):
    sched = diffusion.make_schedule(schedule, 100)
    obs = jnp.zeros((20_000, 1))
    sample = jax.jit(lambda rng: diffusion.sample(gaussian_eps(sched), obs, rng, sched, K, 1, method=method,
                                                  clip_each_step=False))  # fmt: skip
    a = np.asarray(sample(jax.random.PRNGKey(0)))
    assert a.shape == (20_000, 1)
    np.testing.assert_allclose(a.mean(), M, atol=0.01)
    np.testing.assert_allclose(a.std(), S, rtol=std_rtol)


def test_fewer_steps_keep_the_mean_and_shrink_the_spread_gradually():
    # Few steps from a 100-step schedule: the mean stays right for every K; the spread is the data's at K = T and
    # moves away from it steadily as K falls (DDIM and the posterior variance collapse towards the mean, sigma^2 =
    # beta overshoots), never jumping.
    sched = diffusion.cosine_schedule(100)
    obs = jnp.zeros((20_000, 1))
    errors = {}
    for method, variance in (("ddim", "beta"), ("ddpm", "posterior"), ("ddpm", "beta")):
        stds = []
        for K in (100, 25, 10):
            a = np.asarray(diffusion.sample(gaussian_eps(sched), obs, jax.random.PRNGKey(K), sched, K, 1,
                                            method=method, variance=variance, clip_each_step=False))  # fmt: skip
            np.testing.assert_allclose(a.mean(), M, atol=0.01)
            stds.append(a.std())
        errors[method, variance] = np.abs(np.array(stds) - S)
        assert np.all(np.diff(errors[method, variance]) > -0.005), (method, variance, stds)
    assert errors["ddim", "beta"][1] < 0.05 and errors["ddpm", "beta"][1] < 0.05  # K = T/4 within 25% of S


def test_sampler_refuses_bad_settings():
    sched = diffusion.vp_schedule(5)
    eps = gaussian_eps(sched)
    obs, rng = jnp.zeros((2, 1)), jax.random.PRNGKey(0)
    with pytest.raises(SorlError, match="1 <= K <= 5"):
        diffusion.sample(eps, obs, rng, sched, 8, 1)
    with pytest.raises(SorlError, match="unknown diffusion sampler"):
        diffusion.sample(eps, obs, rng, sched, 5, 1, method="euler")
    with pytest.raises(SorlError, match="reverse-step variance"):
        diffusion.sample(eps, obs, rng, sched, 5, 1, variance="learned")


def test_samplers_are_jittable_differentiable_and_batched():
    # Leading batch axes pass through; the schedule may be a traced argument (an agent field); gradients reach
    # the network through every step of both samplers (CAC's Q term needs it).
    obs = jnp.ones((3, 4, 2))
    sched = diffusion.vp_schedule(5)

    def eps_fn(w):
        return lambda o, x, t: jnp.tanh(x * w[0] + o[..., :1] * w[1] + t * w[2])

    def ddpm_mean(w, sched):
        return diffusion.sample(eps_fn(w), obs, jax.random.PRNGKey(0), sched, 4, 2, clip_each_step=False).mean()

    def cm_mean(w):
        return consistency.sample(eps_fn(w), obs, jax.random.PRNGKey(0), 3, 2).mean()

    w = jnp.array([0.3, -0.2, 0.1])
    shape = jax.eval_shape(lambda: diffusion.sample(eps_fn(w), obs, jax.random.PRNGKey(0), sched, 5, 2)).shape
    assert shape == jax.eval_shape(lambda: consistency.sample(eps_fn(w), obs, jax.random.PRNGKey(0), 2, 2)).shape
    assert shape == (3, 4, 2)
    for g in (jax.jit(jax.grad(ddpm_mean))(w, sched), jax.jit(jax.grad(cm_mean))(w)):
        assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)


def test_both_samplers_plug_into_best_of_n():
    # sorl.inference's verifier takes any (observations, key) -> actions sampler: N candidates per state, the
    # critic's best kept. A score peaked at 0.45 picks candidates nearer to it as N grows.
    sched = diffusion.vp_schedule(10)
    obs = jnp.zeros((1000, 1))
    score = lambda o, a: -jnp.abs(a[..., 0] - 0.45)  # noqa: E731
    samplers = {
        "ddpm": lambda o, key: diffusion.sample(gaussian_eps(sched), o, key, sched, 10, 1, clip_each_step=False),
        "cm": lambda o, key: consistency.sample(exact_consistency_net, o, key, 2, 1),
    }
    for name, sample_fn in samplers.items():
        policy = jax.jit(lambda o, rng, N, f=sample_fn: sample_best_of_n(f, score, o, rng, N), static_argnums=2)
        gaps = [float(jnp.abs(policy(obs, jax.random.PRNGKey(1), N) - 0.45).mean()) for N in (1, 8)]
        assert gaps[0] > 1.5 * gaps[1], (name, gaps)


# ------------------------------------------------------------------------------------------ consistency math


def exact_consistency_net(obs, x, sigma):
    """F such that f = c_skip x + c_out F is the exact consistency function for data N(M, S^2) (x = x0 + sigma z):
    the probability-flow ODE maps x at level sigma to M + S / sqrt(S^2 + sigma^2) (x - M)."""
    target = M + S / jnp.sqrt(S**2 + sigma**2) * (x - M)
    c_skip, c_out = consistency.skip_out_scalings(sigma)
    return (target - c_skip * x) / c_out


def test_skip_out_scalings_and_the_boundary_condition():
    c_skip, c_out = consistency.skip_out_scalings(consistency.SIGMA_MIN)
    assert float(c_skip) == 1.0 and float(c_out) == 0.0
    c_skip, c_out = consistency.skip_out_scalings(1.0)  # by hand: 0.25 / (0.998^2 + 0.25), 0.5 * 0.998 / sqrt(1.25)
    np.testing.assert_allclose(c_skip, 0.25 / (0.998**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_out, 0.5 * 0.998 / math.sqrt(1.25), rtol=1e-6)
    c_skip, c_out = consistency.skip_out_scalings(80.0)
    assert float(c_skip) < 1e-4 and abs(float(c_out) - 0.5) < 1e-3
    # f(x, sigma_min) = x whatever the network says.
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    wild = lambda o, x, s: 100.0 * jnp.ones_like(x)  # noqa: E731
    np.testing.assert_allclose(consistency.consistency_function(wild, jnp.zeros((5, 1)), x, consistency.SIGMA_MIN), x)


def test_karras_sigmas_and_the_training_discretisation():
    N = 18
    sigmas = np.asarray(consistency.karras_sigma(jnp.arange(N), N))
    np.testing.assert_allclose([sigmas[0], sigmas[-1]], [0.002, 80.0], rtol=1e-4)
    mid = (0.002 ** (1 / 7) + 0.5 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    np.testing.assert_allclose(consistency.karras_sigma(0.5 * (N - 1), N), mid, rtol=1e-5)
    assert np.all(np.diff(sigmas) > 0)
    assert int(consistency.training_discretisation(0, 1000)) == 2
    assert int(consistency.training_discretisation(1000, 1000)) == 150
    ns = np.asarray(jax.vmap(lambda k: consistency.training_discretisation(k, 1000))(jnp.arange(1001)))
    assert np.all(np.diff(ns) >= 0)
    np.testing.assert_allclose(consistency.sampling_sigmas(2), [80.0, 2.0])
    np.testing.assert_allclose(consistency.sampling_sigmas(1), [80.0])
    with pytest.raises(SorlError, match="K >= 1"):
        consistency.sampling_sigmas(0)


def test_consistency_training_loss_zero_at_the_solution_and_stops_the_target_gradient():
    # Data is the point 0.4: the exact consistency function is 0.4 at every level, so the loss is 0 for it.
    x0 = jnp.full((128, 2), 0.4)
    obs = jnp.zeros((128, 1))

    def net(scale):
        def F(o, x, sigma):
            c_skip, c_out = consistency.skip_out_scalings(sigma)
            return (scale * 0.4 - c_skip * x) / c_out

        return F

    loss = consistency.consistency_training_loss(net(1.0), net(1.0), obs, x0, jax.random.PRNGKey(0), 50)
    assert float(loss) < 1e-8
    grad_online, grad_target = jax.grad(
        lambda a, b: consistency.consistency_training_loss(net(a), net(b), obs, x0, jax.random.PRNGKey(0), 50),
        argnums=(0, 1),
    )(1.1, 0.9)
    assert float(grad_online) != 0.0 and float(grad_target) == 0.0
    # N may be traced (the growing discretisation inside a scanned chunk); scale_by_gap weights by 100 / gap.
    traced = jax.jit(lambda n: consistency.consistency_training_loss(net(1.1), net(1.0), obs, x0,
                                                                     jax.random.PRNGKey(0), n))(50)  # fmt: skip
    np.testing.assert_allclose(traced, 0.04**2, rtol=1e-5)
    scaled = consistency.consistency_training_loss(net(1.1), net(1.0), obs, x0, jax.random.PRNGKey(0), 50,
                                                   scale_by_gap=True)  # fmt: skip
    assert float(scaled) > float(traced)


@pytest.mark.parametrize("K", [1, 2, 5])
def test_multistep_consistency_sampling_with_the_exact_function(K):
    a = np.asarray(consistency.sample(exact_consistency_net, jnp.zeros((20_000, 1)), jax.random.PRNGKey(K), K, 1))
    np.testing.assert_allclose(a.mean(), M, atol=0.01)
    np.testing.assert_allclose(a.std(), S, rtol=0.03)


# ------------------------------------------------------------------------------ trained on a 1-D mixture


class TinyNet(nn.Module):
    """[obs, x, c] -> 1, c the conditioning scalar (a scaled step or log-sigma) with a few Fourier features."""

    @nn.compact
    def __call__(self, obs, x, c):
        k = jnp.arange(1, 5, dtype=jnp.float32)
        inputs = jnp.concatenate([obs, x, c, jnp.sin(c * k), jnp.cos(c * k)], axis=-1)
        return MLP((64, 64, 64, 1), activation=nn.silu)(inputs)


def mixture(rng, n):
    side_rng, noise_rng = jax.random.split(rng)
    side = jnp.where(jax.random.bernoulli(side_rng, 0.5, (n, 1)), 1.0, -1.0)
    return MODE * side + MODE_STD * jax.random.normal(noise_rng, (n, 1))


NET = TinyNet()


def fit(loss_of, steps, seed, ema=None):
    """`NET`'s parameters after Adam (2e-3, cosine decay) on batches of 256 mixture samples, `steps` updates in one
    scan (with an EMA copy passed to the loss as its target when `ema` is set), and the losses."""
    params = NET.init(jax.random.PRNGKey(seed), jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.zeros((1, 1)))
    opt = optax.adam(optax.cosine_decay_schedule(2e-3, steps, 0.1))

    def update(carry, key):
        params, target, opt_state, step = carry
        data_key, loss_key = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_of)(params, target, mixture(data_key, 256), loss_key, step)
        updates, opt_state = opt.update(grads, opt_state)
        params = optax.apply_updates(params, updates)
        if ema is not None:
            target = jax.tree.map(lambda t, p: ema * t + (1 - ema) * p, target, params)
        return (params, target, opt_state, step + 1), loss

    keys = jax.random.split(jax.random.PRNGKey(seed + 1), steps)
    (params, _, _, _), losses = jax.jit(lambda c: jax.lax.scan(update, c, keys))((params, params, opt.init(params), 0))
    return params, np.asarray(losses)


def assert_like_the_mixture(actions):
    a = np.asarray(actions)[:, 0]
    assert abs(a.mean() - MIX_MEAN) < 0.05, a.mean()
    assert abs(a.var() - MIX_VAR) < 0.05, a.var()
    assert (a < 0).mean() > 0.4 and (a > 0).mean() > 0.4, ((a < 0).mean(), (a > 0).mean())
    assert (np.abs(np.abs(a) - MODE) < 0.25).mean() > 0.8  # in a mode, not between them


STEPS = 8000
T = 20


@pytest.fixture(scope="module")
def ddpm_policy():
    sched = diffusion.vp_schedule(T)

    def eps_net(params):
        return lambda o, x, t: NET.apply(params, o, x, t / T)  # the step index scaled to [0, 1)

    def loss(params, _target, x0, key, _step):
        return diffusion.ddpm_loss(eps_net(params), sched, jnp.zeros_like(x0), x0, key)

    params, losses = fit(loss, STEPS, seed=0)
    assert losses[-500:].mean() < 0.8 * losses[:500].mean()
    return eps_net(params), sched


@pytest.mark.parametrize(("K", "method"), [(T, "ddpm"), (T // 2, "ddpm"), (T // 4, "ddpm"), (T, "ddim")])
def test_ddpm_trained_on_the_mixture_samples_both_modes(ddpm_policy, K, method):
    eps_fn, sched = ddpm_policy
    actions = diffusion.sample(eps_fn, jnp.zeros((4000, 1)), jax.random.PRNGKey(7), sched, K, 1, method=method)
    assert_like_the_mixture(actions)


def consistency_net(params):
    # c_in = 1 / sqrt(sigma^2 + sigma_data^2) on the input and 0.25 log(sigma) as the level (CM / EDM's choices),
    # applied by the network since consistency_function leaves them to it.
    return lambda o, x, s: NET.apply(params, o, x / jnp.sqrt(s**2 + 0.25), 0.25 * jnp.log(s))


@pytest.fixture(scope="module")
def consistency_policy():
    def loss(params, target, x0, key, step):
        N = consistency.training_discretisation(step, STEPS)
        online, ema = consistency_net(params), consistency_net(target)
        return consistency.consistency_training_loss(online, ema, jnp.zeros_like(x0), x0, key, N)

    params, losses = fit(loss, STEPS, seed=0, ema=0.95)
    assert np.all(np.isfinite(losses))
    return consistency_net(params)


@pytest.mark.parametrize("K", [1, 2, 4])
def test_consistency_model_trained_on_the_mixture_samples_both_modes(consistency_policy, K):
    actions = consistency.sample(consistency_policy, jnp.zeros((4000, 1)), jax.random.PRNGKey(7), K, 1)
    assert_like_the_mixture(actions)

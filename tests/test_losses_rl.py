"""RL losses against explicit numpy loops, gradient signs, and a PPO step on a toy categorical policy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.losses.rl import (
    ADVANTAGE_ESTIMATORS,
    gae,
    grpo_advantages,
    grpo_loss,
    kl_estimate,
    kl_penalty_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    register_advantage_estimator,
    rloo_advantages,
    update_kl_coef,
    whiten,
)

# ---- numpy references (loops over the valid tokens of each row) ----


def np_whiten(x, mask, shift_mean=True):
    vals = x[mask > 0].astype(np.float64)
    mean, var = vals.mean(), vals.var(ddof=1)
    out = (x - mean) / np.sqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return np.where(mask > 0, out, 0.0)


def np_gae(rewards, values, lengths, gamma, lam):
    b, t = rewards.shape
    adv = np.zeros((b, t))
    for i in range(b):
        last = 0.0
        for j in reversed(range(lengths[i])):
            next_v = values[i, j + 1] if j + 1 < lengths[i] else 0.0
            delta = rewards[i, j] + gamma * next_v - values[i, j]
            last = delta + gamma * lam * last
            adv[i, j] = last
    ret = adv + np.where(np.arange(t)[None] < lengths[:, None], values, 0.0)
    return adv, ret


def np_ppo_policy(logp, old, adv, mask, eps):
    tot, clipped, kl = 0.0, 0.0, 0.0
    for lp, o, a in zip(logp[mask > 0], old[mask > 0], adv[mask > 0], strict=True):
        r = np.exp(lp - o)
        unclipped_obj, clipped_obj = r * a, min(max(r, 1 - eps), 1 + eps) * a
        tot += -min(unclipped_obj, clipped_obj)
        clipped += float(clipped_obj < unclipped_obj)
        kl += 0.5 * (lp - o) ** 2
    n = mask.sum()
    return tot / n, clipped / n, kl / n


def np_ppo_value(v, old, ret, mask, c):
    tot, frac = 0.0, 0.0
    for vi, oi, ri in zip(v[mask > 0], old[mask > 0], ret[mask > 0], strict=True):
        vc = min(max(vi, oi - c), oi + c)
        a, b = (vi - ri) ** 2, (vc - ri) ** 2
        tot += 0.5 * max(a, b)
        frac += float(b > a)
    return tot / mask.sum(), frac / mask.sum()


def np_grpo(logp, old, ref, adv, mask, el, eh, beta, loss_type, max_len):
    b, t = logp.shape
    per = np.zeros((b, t))
    for i in range(b):
        for j in range(t):
            r = np.exp(logp[i, j] - old[i, j])
            per[i, j] = -min(r * adv[i], np.clip(r, 1 - el, 1 + eh) * adv[i])
            if beta:
                per[i, j] += beta * (np.exp(ref[i, j] - logp[i, j]) - (ref[i, j] - logp[i, j]) - 1)
    if loss_type == "grpo":
        return np.mean([(per[i] * mask[i]).sum() / max(mask[i].sum(), 1) for i in range(b)])
    if loss_type == "dapo":
        return (per * mask).sum() / mask.sum()
    return (per * mask).sum() / (b * max_len)


def _tokens(seed=0, b=4, t=9):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, size=b)
    lengths[0] = t
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
    return rng, lengths, mask


def test_whiten():
    rng, _, mask = _tokens(0)
    x = (rng.normal(size=mask.shape) * 3 + 2).astype(np.float32)
    for shift in (True, False):
        np.testing.assert_allclose(whiten(x, mask, shift), np_whiten(x, mask, shift), rtol=1e-4, atol=1e-5)
    w = np.asarray(whiten(x, mask))
    assert abs(w[mask > 0].mean()) < 1e-5 and abs(w[mask > 0].std(ddof=1) - 1) < 1e-4


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0)])
def test_gae_matches_reverse_loop(gamma, lam):
    rng, lengths, mask = _tokens(1)
    rewards = rng.normal(size=mask.shape).astype(np.float32)
    values = rng.normal(size=mask.shape).astype(np.float32)
    # Garbage past the end of each response must not leak in.
    rewards[mask == 0] = 100.0
    values[mask == 0] = -100.0
    adv, ret = gae(rewards, values, mask, gamma, lam)
    want_adv, want_ret = np_gae(rewards, values, lengths, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)


def test_gae_lambda_one_is_discounted_return():
    rng, lengths, mask = _tokens(2)
    rewards = rng.normal(size=mask.shape).astype(np.float32) * mask
    values = rng.normal(size=mask.shape).astype(np.float32)
    _, ret = gae(rewards, values, mask, 0.9, 1.0)
    for i, n in enumerate(lengths):
        for j in range(n):
            want = sum(0.9 ** (k - j) * rewards[i, k] for k in range(j, n))
            np.testing.assert_allclose(ret[i, j], want, rtol=1e-5, atol=1e-5)


def test_ppo_policy_loss_matches_loop_and_grad_sign():
    rng, _, mask = _tokens(3)
    old = -rng.random(mask.shape).astype(np.float32) * 3
    logp = (old + rng.normal(size=mask.shape) * 0.3).astype(np.float32)
    adv = rng.normal(size=mask.shape).astype(np.float32)
    loss, m = ppo_policy_loss(logp, old, adv, mask, 0.2)
    want, clipfrac, kl = np_ppo_policy(logp, old, adv, mask, 0.2)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(m["clipfrac"], clipfrac, rtol=1e-6)
    np.testing.assert_allclose(m["approx_kl"], kl, rtol=1e-5)
    assert 0 < clipfrac < 1
    # On-policy (ratio 1, nothing clipped): d loss / d logp = -A * mask / n, i.e. sign opposite to A.
    g = np.asarray(jax.grad(lambda lp: ppo_policy_loss(lp, old, adv, mask, 0.2)[0])(jnp.asarray(old)))
    np.testing.assert_allclose(g, -adv * mask / mask.sum(), rtol=1e-5, atol=1e-7)


def test_ppo_value_loss_matches_loop():
    rng, _, mask = _tokens(4)
    old = rng.normal(size=mask.shape).astype(np.float32)
    v = (old + rng.normal(size=mask.shape) * 0.5).astype(np.float32)
    ret = rng.normal(size=mask.shape).astype(np.float32)
    loss, m = ppo_value_loss(v, old, ret, mask, 0.2)
    want, frac = np_ppo_value(v, old, ret, mask, 0.2)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(m["vf_clipfrac"], frac, rtol=1e-6)
    g = np.asarray(jax.grad(lambda x: ppo_value_loss(x, x, ret, mask, 0.2)[0])(jnp.asarray(v)))
    np.testing.assert_allclose(g, (v - ret) * mask / mask.sum(), rtol=1e-5, atol=1e-7)


def test_ppo_step_increases_prob_of_advantaged_action():
    """Toy categorical policy over 5 actions: one gradient step on the clipped loss with A > 0 on action 2."""
    theta = jnp.asarray(np.random.default_rng(5).normal(size=5), jnp.float32)
    actions = jnp.array([[2, 2, 2]])
    old = jax.nn.log_softmax(theta)[actions]
    adv = jnp.ones((1, 3))
    mask = jnp.ones((1, 3))

    def loss(th):
        return ppo_policy_loss(jax.nn.log_softmax(th)[actions], old, adv, mask, 0.2)[0]

    new_theta = theta - 0.5 * jax.grad(loss)(theta)
    p0, p1 = jax.nn.softmax(theta)[2], jax.nn.softmax(new_theta)[2]
    assert p1 > p0
    # And with a negative advantage the probability goes down.
    neg = lambda th: ppo_policy_loss(jax.nn.log_softmax(th)[actions], old, -adv, mask, 0.2)[0]
    assert jax.nn.softmax(theta - 0.5 * jax.grad(neg)(theta))[2] < p0


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalty_rewards(estimator):
    rng, lengths, mask = _tokens(6)
    mask[2] = 0.0  # an empty row gets neither penalty nor score
    logp = -rng.random(mask.shape).astype(np.float32) * 3
    ref = -rng.random(mask.shape).astype(np.float32) * 3
    score = rng.normal(size=mask.shape[0]).astype(np.float32)
    rewards, kl = kl_penalty_rewards(score, logp, ref, mask, 0.05, kl_estimator=estimator)
    want_r = np.zeros(mask.shape)
    want_kl = np.zeros(mask.shape)
    for i in range(mask.shape[0]):
        valid = np.nonzero(mask[i])[0]
        for j in valid:
            lr = float(logp[i, j]) - float(ref[i, j])
            want_kl[i, j] = lr if estimator == "k1" else np.exp(-lr) + lr - 1
            want_r[i, j] = -0.05 * want_kl[i, j]
        if len(valid):
            want_r[i, valid[-1]] += score[i]
    np.testing.assert_allclose(kl, want_kl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rewards, want_r, rtol=1e-5, atol=1e-6)
    if estimator == "k3":
        assert np.all(np.asarray(kl) >= 0)


def test_adaptive_kl():
    for kl, want in [
        (6.0 * 1.1, 0.1 * (1 + 0.1 * 256 / 10000)),
        (60.0, 0.1 * (1 + 0.2 * 256 / 10000)),
        (0.0, 0.1 * (1 - 0.2 * 256 / 10000)),
    ]:
        np.testing.assert_allclose(update_kl_coef(0.1, kl, 256, 6.0, 10000), want, rtol=1e-5)
    assert update_kl_coef(0.1, 12.0, 256, 6.0, 10000) > 0.1 > update_kl_coef(0.1, 1.0, 256, 6.0, 10000)


def test_grpo_advantages():
    rng = np.random.default_rng(7)
    r = rng.normal(size=(3, 4)).astype(np.float32)
    r[1] = 1.0  # a group with identical rewards -> all-zero advantages (no nan)
    flat = grpo_advantages(r.reshape(-1), 4)
    assert flat.shape == (12,)
    grouped = np.asarray(grpo_advantages(r, 4))
    for g in range(3):
        mean, std = r[g].mean(), r[g].std(ddof=1)
        np.testing.assert_allclose(grouped[g], (r[g] - mean) / (std + 1e-4), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            np.asarray(grpo_advantages(r, 4, scale_rewards=False))[g], r[g] - mean, rtol=1e-5, atol=1e-6
        )
    np.testing.assert_allclose(np.asarray(flat).reshape(3, 4), grouped, rtol=1e-6)
    assert np.all(grouped[1] == 0)


def test_rloo_and_the_advantage_registry():
    """RLOO (Ahmadian et al. 2024): each reward minus the mean of the *other* G - 1 rewards of its group."""
    r = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)
    want = np.stack([[r[g, i] - np.delete(r[g], i).mean() for i in range(4)] for g in range(2)])
    np.testing.assert_allclose(np.asarray(rloo_advantages(r.reshape(-1), 4)).reshape(2, 4), want, rtol=1e-5)
    np.testing.assert_allclose(ADVANTAGE_ESTIMATORS["rloo"](r, 4), want, rtol=1e-5)
    np.testing.assert_allclose(ADVANTAGE_ESTIMATORS["grpo"](r, 4), grpo_advantages(r, 4), rtol=1e-6)
    np.testing.assert_allclose(ADVANTAGE_ESTIMATORS["dr_grpo"](r, 4), r - r.mean(1, keepdims=True), rtol=1e-5)

    @register_advantage_estimator("test_zero")
    def zero(rewards, group_size):
        return np.zeros_like(rewards)

    try:
        assert "test_zero" in ADVANTAGE_ESTIMATORS
    finally:
        ADVANTAGE_ESTIMATORS.pop("test_zero")
    with pytest.raises(ValueError, match="unknown kl_estimator"):
        kl_estimate(np.zeros(2), "k2")


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_matches_loop(loss_type, beta):
    rng, _, mask = _tokens(8, b=6, t=7)
    old = -rng.random(mask.shape).astype(np.float32) * 2
    logp = (old + rng.normal(size=mask.shape) * 0.3).astype(np.float32)
    ref = (old + rng.normal(size=mask.shape) * 0.3).astype(np.float32)
    adv = rng.normal(size=mask.shape[0]).astype(np.float32)
    kw = dict(epsilon_low=0.2, epsilon_high=0.28, beta=beta, loss_type=loss_type)
    max_len = 10 if loss_type == "dr_grpo" else None
    loss, m = grpo_loss(logp, old, ref, adv, mask, max_completion_length=max_len, **kw)
    want = np_grpo(logp, old, ref, adv, mask, 0.2, 0.28, beta, loss_type, max_len)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    r = np.exp(logp - old)
    low = (r < 0.8) & (adv[:, None] < 0)
    high = (r > 1.28) & (adv[:, None] > 0)
    np.testing.assert_allclose(m["clip_ratio/low"], (low * mask).sum() / mask.sum(), rtol=1e-6)
    np.testing.assert_allclose(m["clip_ratio/high"], (high * mask).sum() / mask.sum(), rtol=1e-6)
    np.testing.assert_allclose(m["clip_ratio"], ((low | high) * mask).sum() / mask.sum(), rtol=1e-6)
    k3 = np.exp(ref - logp) - (ref - logp) - 1
    np.testing.assert_allclose(m["kl"], (k3 * mask).sum() / mask.sum() if beta else 0.0, rtol=1e-5)


def test_grpo_gradient_sign_and_on_policy_default():
    rng, _, mask = _tokens(9)
    logp = jnp.asarray(-rng.random(mask.shape) * 2, jnp.float32)
    adv = jnp.asarray([1.0, -1.0, 2.0, -0.5])
    f = lambda lp: grpo_loss(lp, None, None, adv, mask, loss_type="dapo")[0]
    g = np.asarray(jax.grad(f)(logp))
    np.testing.assert_allclose(g, -np.asarray(adv)[:, None] * mask / mask.sum(), rtol=1e-5, atol=1e-7)
    # old=None equals passing old = logp.
    np.testing.assert_allclose(f(logp), grpo_loss(logp, logp, None, adv, mask, loss_type="dapo")[0], rtol=1e-6)
    # The KL term pulls logp toward ref: with A = 0 and logp > ref, the gradient is positive.
    ref = logp - 0.5
    gk = jax.grad(lambda lp: grpo_loss(lp, None, ref, jnp.zeros(4), mask, beta=0.1)[0])(logp)
    assert np.all(np.asarray(gk)[mask > 0] > 0)
    with pytest.raises(ValueError, match="grpo, dapo, dr_grpo"):
        grpo_loss(logp, None, None, adv, mask, loss_type="ppo")

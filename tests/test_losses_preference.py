"""Preference losses against independent numpy transcriptions of each paper's formula, plus gradient signs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.losses.preference import DPO_LOSS_TYPES, bradley_terry_loss, dpo_loss

# ---- numpy references ----


def np_logsig(x):
    x = np.asarray(x, np.float64)
    return -np.logaddexp(0.0, -x)


def np_bt(rc, rr, margin, c):
    m = 0.0 if margin is None else margin
    return np.mean(-np_logsig(rc - rr - m)) + c * np.mean((rc + rr) ** 2)


def np_dpo(pc, pr, rc, rr, loss_type, beta, eps=0.0, lc=None, lr=None, gamma=1.0, ipo_norm=False, orpo_nll=True):
    pc, pr = np.float64(pc), np.float64(pr)
    if loss_type == "simpo":
        return np.mean(-np_logsig(beta * pc / lc - beta * pr / lr - gamma))
    if loss_type == "orpo":
        ac, ar = pc / lc, pr / lr
        odds_c = np.exp(ac) / (1 - np.exp(ac))  # p / (1 - p) with p the length-averaged likelihood
        odds_r = np.exp(ar) / (1 - np.exp(ar))
        l_or = -np_logsig(np.log(odds_c / odds_r))
        l_sft = -ac
        return np.mean((l_sft if orpo_nll else 0.0) + beta * l_or)
    if ipo_norm:
        h = (pc - rc) / lc - (pr - rr) / lr
    else:
        h = (pc - rc) - (pr - rr)
    if loss_type == "sigmoid":
        return np.mean(-(1 - eps) * np_logsig(beta * h) - eps * np_logsig(-beta * h))
    if loss_type == "robust":
        return np.mean(((1 - eps) * -np_logsig(beta * h) + eps * np_logsig(-beta * h)) / (1 - 2 * eps))
    if loss_type == "ipo":
        return np.mean((h - 1 / (2 * beta)) ** 2)
    if loss_type == "hinge":
        return np.mean(np.maximum(0.0, 1 - beta * h))
    raise AssertionError(loss_type)


def _batch(seed=0, n=16):
    rng = np.random.default_rng(seed)
    lc = rng.integers(5, 40, size=n).astype(np.float32)
    lr = rng.integers(5, 40, size=n).astype(np.float32)
    # Summed log-probs ~ -1.5 nats per token; the policy sits near the reference.
    ref_c = (-1.5 * lc + rng.normal(size=n)).astype(np.float32)
    ref_r = (-1.5 * lr + rng.normal(size=n)).astype(np.float32)
    pc = (ref_c + rng.normal(size=n)).astype(np.float32)
    pr = (ref_r + rng.normal(size=n)).astype(np.float32)
    return pc, pr, ref_c, ref_r, lc, lr


def test_bradley_terry():
    rng = np.random.default_rng(0)
    rc, rr = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    margin = rng.random(8).astype(np.float32)
    for m in (None, margin):
        for c in (0.0, 0.01):
            loss, metrics = bradley_terry_loss(rc, rr, m, c)
            np.testing.assert_allclose(loss, np_bt(rc, rr, m, c), rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/accuracy"], np.mean(rc > rr), rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards/margin"], np.mean(rc - rr), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["rewards/chosen"], rc.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/rejected"], rr.mean(), rtol=1e-5)
    gc, gr = jax.grad(lambda a, b: bradley_terry_loss(a, b)[0], argnums=(0, 1))(rc, rr)
    assert np.all(np.asarray(gc) < 0) and np.all(np.asarray(gr) > 0)


CASES = [
    ("sigmoid", dict(beta=0.1)),
    ("sigmoid", dict(beta=0.5, label_smoothing=0.1)),
    ("robust", dict(beta=0.1, label_smoothing=0.2)),
    ("robust", dict(beta=0.1)),
    ("ipo", dict(beta=0.1)),
    ("ipo", dict(beta=0.5, ipo_length_normalize=True)),
    ("hinge", dict(beta=0.1)),
    ("simpo", dict(beta=2.0, simpo_gamma=1.0)),
    ("orpo", dict(beta=0.1)),
    ("orpo", dict(beta=0.1, orpo_include_nll=False)),
]


@pytest.mark.parametrize("loss_type,kw", CASES)
def test_dpo_family_matches_numpy(loss_type, kw):
    pc, pr, ref_c, ref_r, lc, lr = _batch(1)
    loss, metrics = dpo_loss(pc, pr, ref_c, ref_r, loss_type=loss_type, chosen_lengths=lc, rejected_lengths=lr, **kw)
    want = np_dpo(
        pc,
        pr,
        ref_c,
        ref_r,
        loss_type,
        kw["beta"],
        kw.get("label_smoothing", 0.0),
        lc,
        lr,
        kw.get("simpo_gamma", 1.0),
        kw.get("ipo_length_normalize", False),
        kw.get("orpo_include_nll", True),
    )
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    beta = kw["beta"]
    if loss_type in ("simpo", "orpo"):
        cr, rr = beta * pc / lc, beta * pr / lr
    else:
        cr, rr = beta * (pc - ref_c), beta * (pr - ref_r)
    np.testing.assert_allclose(metrics["rewards/chosen"], cr.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/rejected"], rr.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/accuracy"], np.mean(cr > rr), rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards/margin"], np.mean(cr - rr), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["logps/chosen"], pc.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["logps/rejected"], pr.mean(), rtol=1e-5)


@pytest.mark.parametrize("loss_type,kw", CASES)
def test_dpo_family_gradient_signs(loss_type, kw):
    """Raising the chosen log-prob lowers every loss; raising the rejected one raises it (typical regime)."""
    pc, pr, ref_c, ref_r, lc, lr = _batch(2)
    if loss_type == "hinge":  # keep beta*h < 1 so the hinge is active
        pc, pr = ref_c + 0.5, ref_r - 0.5

    def f(a, b):
        return dpo_loss(a, b, ref_c, ref_r, loss_type=loss_type, chosen_lengths=lc, rejected_lengths=lr, **kw)[0]

    gc, gr = jax.grad(f, argnums=(0, 1))(jnp.asarray(pc), jnp.asarray(pr))
    assert np.all(np.asarray(gc) < 0), (loss_type, gc)
    assert np.all(np.asarray(gr) > 0), (loss_type, gr)
    assert np.isfinite(float(f(pc, pr)))


def test_dpo_at_init_is_log2():
    """Policy == reference: h = 0 so the DPO loss is log 2 and the rewards are 0."""
    pc, pr, _, _, _, _ = _batch(3)
    loss, metrics = dpo_loss(pc, pr, pc, pr, loss_type="sigmoid", beta=0.1)
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
    assert float(metrics["rewards/margin"]) == 0.0 and float(metrics["rewards/accuracy"]) == 0.0


def test_orpo_stable_near_certain_answers():
    lc = np.array([10.0, 10.0], np.float32)
    pc = np.array([-1e-6, -1e-3], np.float32)  # average log-prob ~ 0: odds -> inf but finite here
    pr = np.array([-20.0, -30.0], np.float32)
    g = jax.grad(lambda a: dpo_loss(a, pr, loss_type="orpo", beta=0.1, chosen_lengths=lc, rejected_lengths=lc)[0])(
        jnp.asarray(pc)
    )
    assert np.isfinite(np.asarray(g)).all()


def test_dpo_errors():
    pc, pr, ref_c, ref_r, lc, lr = _batch(4)
    with pytest.raises(ValueError, match="sigmoid, robust, ipo, hinge, simpo, orpo"):
        dpo_loss(pc, pr, ref_c, ref_r, loss_type="kto", beta=0.1)
    with pytest.raises(ValueError, match="lengths"):
        dpo_loss(pc, pr, loss_type="simpo", beta=2.0)
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        dpo_loss(pc, pr, loss_type="sigmoid", beta=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(pc, pr, ref_c, ref_r, loss_type="ipo", beta=0.1, label_smoothing=0.1)
    with pytest.raises(ValueError):
        dpo_loss(pc, pr, ref_c, ref_r, loss_type="robust", beta=0.1, label_smoothing=0.5)
    assert set(DPO_LOSS_TYPES) == {"sigmoid", "robust", "ipo", "hinge", "simpo", "orpo"}


def test_dpo_jits():
    pc, pr, ref_c, ref_r, lc, lr = _batch(5)
    f = jax.jit(lambda *a: dpo_loss(*a, loss_type="sigmoid", beta=0.1)[0])
    np.testing.assert_allclose(f(pc, pr, ref_c, ref_r), np_dpo(pc, pr, ref_c, ref_r, "sigmoid", 0.1), rtol=1e-5)

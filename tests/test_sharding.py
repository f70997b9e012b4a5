"""Mesh construction, logical-axis rules and sharded computation on 8 fake CPU devices (see conftest.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxpt.sharding import (
    DEFAULT_RULES,
    MESH_AXES,
    batch_sharding,
    logical_to_mesh_spec,
    make_mesh,
    normalize_rules,
    param_shardings,
    partition_spec_table,
    shard_batch,
)

P = PartitionSpec
MESHES = [(8, 1, 1), (2, 2, 2), (1, 4, 2)]


def test_eight_fake_devices():
    assert jax.device_count() == 8, "tests/conftest.py must set XLA_FLAGS before jax initialises"


@pytest.mark.parametrize("shape", MESHES)
def test_make_mesh(shape):
    mesh = make_mesh(*shape)
    assert mesh.axis_names == MESH_AXES
    assert tuple(mesh.shape.values()) == shape
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_make_mesh_minus_one():
    assert tuple(make_mesh(2, -1, 2).shape.values()) == (2, 2, 2)
    assert tuple(make_mesh(-1, 1, 1).shape.values()) == (8, 1, 1)
    assert tuple(make_mesh(1, 1, -1, devices=jax.devices()[:2]).shape.values()) == (1, 1, 2)


@pytest.mark.parametrize(
    "sizes, match",
    [
        ((3, 1, 1), r"multiply to 3 but there are 8 devices"),
        ((2, 2, 4), r"multiply to 16 but there are 8 devices"),
        ((3, -1, 1), r"data=3.*does not divide 8 devices"),
        ((-1, -1, 1), r"at most one"),
        ((0, 8, 1), r"positive"),
    ],
)
def test_make_mesh_errors(sizes, match):
    with pytest.raises(ValueError, match=match):
        make_mesh(*sizes)


def test_rules_cover_documented_names():
    names = {n for n, _ in DEFAULT_RULES}
    params = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers", "norm"}
    acts = {"act_batch", "act_length", "act_embed", "act_heads", "act_kv_heads", "act_mlp", "act_vocab"}
    assert params | acts == names


def test_logical_to_mesh_spec():
    assert logical_to_mesh_spec(("embed", "mlp"), DEFAULT_RULES) == P("fsdp", "tensor")
    assert logical_to_mesh_spec(("layers", "embed", "heads", "head_dim"), DEFAULT_RULES) == P(
        None, "fsdp", "tensor", None
    )
    assert logical_to_mesh_spec(("act_batch", "act_length", "act_vocab"), DEFAULT_RULES) == P(
        ("data", "fsdp"), None, "tensor"
    )
    assert logical_to_mesh_spec((None, "norm"), DEFAULT_RULES) == P(None, None)
    # The same mesh axis twice: the earlier *rule* wins (flax semantics), the other dim is replicated.
    assert logical_to_mesh_spec(("mlp", "heads"), DEFAULT_RULES) == P(None, "tensor")
    # A later rule for the same name is a fallback when the first one conflicts.
    rules = [("a", "tensor"), ("b", "tensor"), ("b", "fsdp")]
    assert logical_to_mesh_spec(("a", "b"), rules) == P("tensor", "fsdp")


def test_rules_as_list_of_lists_and_flax_agreement():
    as_lists = [[n, list(a) if isinstance(a, tuple) else a] for n, a in DEFAULT_RULES]
    assert normalize_rules(as_lists) == DEFAULT_RULES
    for spec in [("embed", "vocab"), ("heads", "mlp"), ("act_batch", "act_length", "act_heads", None)]:
        ours = logical_to_mesh_spec(spec, as_lists)
        assert ours == nn.logical_to_mesh_axes(spec, DEFAULT_RULES), spec


def test_uncovered_name_is_an_error():
    with pytest.raises(ValueError, match="'experts'.*no sharding rule"):
        logical_to_mesh_spec(("embed", "experts"), DEFAULT_RULES)
    with pytest.raises(ValueError, match="more than one dimension"):
        logical_to_mesh_spec(("embed", "embed"), DEFAULT_RULES)


class Toy(nn.Module):
    """Two-layer MLP regression head with logically named parameters."""

    hidden: int = 16

    @nn.compact
    def __call__(self, x):
        normal, zeros, ones = nn.initializers.normal(0.5), nn.initializers.zeros, nn.initializers.ones
        named = nn.with_logical_partitioning
        w1 = self.param("w1", named(normal, ("embed", "mlp")), (x.shape[-1], self.hidden))
        b1 = self.param("b1", named(zeros, ("mlp",)), (self.hidden,))
        w2 = self.param("w2", named(normal, ("mlp", "embed")), (self.hidden, 1))
        scale = self.param("scale", named(ones, ("norm",)), (1,))
        return (jnp.tanh(x @ w1 + b1) @ w2)[..., 0] * scale[0]


def _abstract(module, features=8):
    return jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, features)))


def test_param_shardings_and_sharded_init():
    mesh = make_mesh(2, 2, 2)
    module = Toy()
    shardings = param_shardings(_abstract(module), mesh, DEFAULT_RULES)
    table = partition_spec_table(shardings)
    assert table == {
        "params/b1": "[tensor]",
        "params/scale": "[None]",
        "params/w1": "[fsdp, tensor]",
        "params/w2": "[tensor, None]",  # embed dim of size 1 is not divisible by fsdp=2 -> replicated
    }
    variables = jax.jit(module.init, out_shardings=shardings)(jax.random.key(0), jnp.ones((1, 8)))
    params = nn.meta.unbox(variables)["params"]
    assert params["w1"].sharding == NamedSharding(mesh, P("fsdp", "tensor"))
    # 8x16 split 2 (fsdp) x 2 (tensor), replicated over data: each device holds a 4x8 block.
    assert {s.data.shape for s in params["w1"].addressable_shards} == {(4, 8)}
    assert params["b1"].sharding.spec == P("tensor")


def test_uneven_dim_falls_back_and_is_recorded():
    mesh = make_mesh(1, 4, 2)
    fallbacks: list[str] = []
    abstract = _abstract(Toy(hidden=6), features=12)
    table = partition_spec_table(param_shardings(abstract, mesh, DEFAULT_RULES, fallbacks=fallbacks))
    assert table["params/w1"] == "[fsdp, tensor]"  # 12 % 4 == 0 and 6 % 2 == 0
    assert table["params/w2"] == "[tensor, None]"
    assert fallbacks == ["params/w2: dim 1 (embed=1) is not divisible by mesh axes 'fsdp' (size 4); replicated"]
    fallbacks.clear()
    table = partition_spec_table(param_shardings(abstract, make_mesh(1, 8, 1), DEFAULT_RULES, fallbacks=fallbacks))
    assert table["params/w1"] == "[None, tensor]"  # tensor=1 always divides
    assert any("params/w1: dim 0 (embed=12)" in f and "'fsdp' (size 8)" in f for f in fallbacks)


def test_param_without_names_is_an_error():
    class Unnamed(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3, name="proj")(x)

    abstract = jax.eval_shape(Unnamed().init, jax.random.key(0), jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="'params/proj/(bias|kernel)'.*no logical axis names"):
        param_shardings(abstract, make_mesh(8, 1, 1), DEFAULT_RULES)


def test_param_with_unruled_name_is_an_error():
    class Experts(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.with_logical_partitioning(nn.initializers.zeros, ("experts", "embed"))
            return x @ self.param("router", init, (4, 4))

    abstract = jax.eval_shape(Experts().init, jax.random.key(0), jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="'params/router'.*'experts'.*no sharding rule"):
        param_shardings(abstract, make_mesh(8, 1, 1), DEFAULT_RULES)


def test_logical_spec_tree_input():
    specs = {"a": P("embed", "vocab"), "b": P()}
    shardings = param_shardings(specs, make_mesh(2, 2, 2), DEFAULT_RULES)
    assert partition_spec_table(shardings) == {"a": "[fsdp, tensor]", "b": "[]"}


def test_shard_batch():
    mesh = make_mesh(2, 2, 2)
    inputs = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
    batch = {"inputs": inputs, "loss_mask": np.ones((8, 3), np.float32)}
    sharded = shard_batch(batch, mesh)
    assert sharded["inputs"].sharding == batch_sharding(mesh)
    assert {s.data.shape for s in sharded["inputs"].addressable_shards} == {(2, 3)}
    np.testing.assert_array_equal(np.asarray(sharded["inputs"]), batch["inputs"])
    with pytest.raises(ValueError, match=r"batch\['inputs'\].*divisible by data\*fsdp = 4"):
        shard_batch({"inputs": np.zeros((6, 3), np.int32)}, mesh)


def _train(mesh, steps=3):
    """A jitted regression train step with explicit in/out shardings; returns (losses, params as numpy)."""
    module = Toy()
    shardings = param_shardings(_abstract(module), mesh, DEFAULT_RULES)
    params_sh = shardings["params"]
    opt = optax.adam(0.05)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8)).astype(np.float32)
    y = np.sin(x.sum(-1)).astype(np.float32)

    init = lambda k: nn.meta.unbox(module.init(k, jnp.ones((1, 8))))["params"]
    params = jax.jit(init, out_shardings=params_sh)(jax.random.key(1))
    opt_state = jax.jit(opt.init)(params)

    def step(params, opt_state, batch):
        def loss_fn(p):
            pred = module.apply({"params": p}, batch["x"])
            return jnp.mean((pred - batch["y"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    batch_sh = {"x": batch_sharding(mesh), "y": batch_sharding(mesh)}
    jitted = jax.jit(
        step,
        in_shardings=(params_sh, None, batch_sh),
        out_shardings=(params_sh, None, None),
        donate_argnums=(0, 1),
    )
    losses = []
    for _ in range(steps):
        params, opt_state, loss = jitted(params, opt_state, shard_batch({"x": x, "y": y}, mesh))
        losses.append(float(loss))
    assert params["w1"].sharding == params_sh["w1"]
    return losses, jax.tree.map(np.asarray, params)


def test_same_training_on_every_mesh():
    ref_losses, ref_params = _train(make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    assert ref_losses[-1] < ref_losses[0]
    for shape in MESHES:
        losses, params = _train(make_mesh(*shape))
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=str(shape))
        for name in ref_params:
            np.testing.assert_allclose(params[name], ref_params[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_default_rules_cover_the_decoder():
    """Every logical name the real decoder uses has a rule (eval_shape only: no compute)."""
    from jaxpt.models.config import ModelConfig
    from jaxpt.models.decoder import abstract_params

    config = ModelConfig(
        model_type="llama", vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, max_position_embeddings=64, norm_eps=1e-5, scan_layers=True,
    )  # fmt: skip
    table = partition_spec_table(param_shardings(abstract_params(config), make_mesh(2, 2, 2), DEFAULT_RULES))
    assert table and all(spec.startswith("[") for spec in table.values())

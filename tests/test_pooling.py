"""The GPU pooling kernel (models/pooling.py), run in Pallas interpret mode on CPU, against
the jnp reductions of layers.pool that it replaces on GPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spin_jax.models import layers as L
from spin_jax.models import pooling


# (T, F): 16-token steps on 3 tiles of 32 features; 32-token steps on 2 tiles of 128;
# 4 tokens a kernel row (384 wide); 2 tokens a kernel row (also 384 wide).
@pytest.mark.parametrize("shape", [(48, 96), (64, 256), (64, 96), (96, 192)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_equals_jnp_pooling(dtype, shape):
    rng = np.random.default_rng(0)
    B, (T, F) = 6, shape
    x = jnp.asarray(rng.standard_normal((B, T, F)) * 3.0 - 1.0, dtype)
    lengths = jnp.asarray([0, 1, 15, 16, 33, T])  # empty, step edges, full
    mask = jnp.arange(T)[None] < lengths[:, None]
    mean, mx = pooling.mean_max(x, lengths, interpret=True)
    want = np.asarray(L.pool(x, mask, jnp.zeros(B, jnp.int32)))
    assert mean.dtype == mx.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(mx), want[:, 2])  # max is exact
    np.testing.assert_allclose(np.asarray(mean), want[:, 1], rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(mean)[0] == 0) and np.all(np.asarray(mx)[0] == 0)


def test_narrow_widths_are_read_as_several_tokens_a_row():
    assert pooling._group(384, 1600) == 4  # GPT2-XL's hidden state: read 6400 wide
    assert pooling._group(384, 6400) == pooling._group(384, 768) == 1  # 128-aligned
    assert (pooling._group(64, 96), pooling._group(96, 192), pooling._group(48, 96)) == (4, 2, 1)


@pytest.mark.parametrize("group", [1, 2, 4])
def test_grouping_tokens_changes_nothing(group):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((5, 64, 96)), jnp.float32)
    lengths = jnp.asarray([0, 1, 6, 37, 64])
    want = pooling.mean_max(x, lengths, interpret=True, group=1)
    got = pooling.mean_max(x, lengths, interpret=True, group=group)
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(32, 64), (64, 96)])  # 2 and 4 tokens a kernel row
def test_padding_values_are_never_read(shape):
    """Garbage (NaN, inf) past each row's length changes nothing, also where a kernel row
    holds real tokens and padding side by side."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    lengths = jnp.asarray([5, 21])
    clean = pooling.mean_max(jnp.asarray(x), lengths, interpret=True)
    x[0, 5:], x[1, 21:] = np.nan, np.inf
    dirty = pooling.mean_max(jnp.asarray(x), lengths, interpret=True)
    for a, b in zip(clean, dirty, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_kernel_only_where_its_shapes_fit():
    if jax.default_backend() == "cpu":
        assert not pooling.kernel_applies(jnp.zeros((2, 32, 64)))  # the jnp path
    with pytest.raises(ValueError, match="T % 16"):
        pooling.mean_max(jnp.zeros((2, 24, 64)), jnp.asarray([3, 4]), interpret=True)
    if jax.default_backend() == "gpu":
        assert pooling.kernel_applies(jnp.zeros((2, 32, 64)))
        assert not pooling.kernel_applies(jnp.zeros((2, 24, 64)))

"""Analytic FLOP counts: hand-computed layers, gradients, sub-jaxprs."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from mtssl.flops import count_flops


def test_matmul_and_strided_conv_by_hand():
    assert count_flops(lambda a, b: a @ b, jnp.zeros((3, 4)), jnp.zeros((4, 5))) == 120
    conv = nnx.Conv(8, 16, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
    x = jnp.zeros((2, 16, 16, 8))
    # 2 images x 8x8 outputs x 16 channels x 3x3x8 taps, padding taps included.
    assert count_flops(conv, x) == 2 * (2 * 8 * 8 * 16) * (3 * 3 * 8)


def test_a_training_step_is_three_forward_passes():
    conv = nnx.Conv(8, 16, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(conv)
    x = jnp.zeros((2, 16, 16, 8))

    def loss(p, x):
        return nnx.merge(graphdef, p)(x).sum()
    forward = count_flops(loss, params, x)
    # Input gradient (a stride-dilated conv, its inserted zeros not counted) +
    # kernel gradient, each as costly as the forward pass.
    assert count_flops(jax.grad(loss, argnums=(0, 1)), params, x) == pytest.approx(3 * forward)


def test_scan_jit_and_cond_bodies_are_followed():
    a = jnp.zeros((4, 4))

    def body(c, _):
        return c @ a, None
    assert count_flops(lambda c: jax.lax.scan(body, c, length=5)[0], a) == 5 * 2 * 4 ** 3
    assert count_flops(jax.jit(lambda c: c @ c), a) == 2 * 4 ** 3
    both = lambda p, c: jax.lax.cond(p, lambda c: c @ c @ c, lambda c: c, c)
    assert count_flops(both, True, a) == 2 * 2 * 4 ** 3

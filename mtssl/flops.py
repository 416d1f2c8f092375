"""Analytic FLOP counts of jitted functions, from their jaxprs.

`count_flops(fn, *args)` sums 2 x multiply-adds of every convolution and
matrix product the function performs, from operand shapes: a convolution
counts every kernel tap of every output (taps that land on padding too, as
the usual per-layer formulas do; XLA's cost analysis leaves those out and
undercounts), divided by its input dilation (the zeros a transposed or
input-gradient convolution inserts are not work). Sub-jaxprs are followed
(jit, custom_vjp, remat; scan bodies x their length; cond: the costliest
branch). Element-wise work is ignored: it is a rounding error next to the
convolutions of these networks, and matmul peak is what MFU compares to.
"""

from __future__ import annotations

import math

import jax
from jax.extend import core as jax_core


def _conv_flops(eqn) -> float:
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    dn = eqn.params["dimension_numbers"]
    rhs_spec = dn.rhs_spec                      # (out feature, in feature, *spatial)
    taps = math.prod(rhs[d] for d in rhs_spec[2:]) * rhs[rhs_spec[1]]
    dilation = math.prod(eqn.params.get("lhs_dilation") or (1,))
    return 2.0 * math.prod(out) * taps / dilation


def _dot_flops(eqn) -> float:
    (contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)


def _jaxpr_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * _jaxpr_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(_jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
        else:
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(sub, jax_core.ClosedJaxpr):
                        total += _jaxpr_flops(sub.jaxpr)
                    elif isinstance(sub, jax_core.Jaxpr):
                        total += _jaxpr_flops(sub)
    return total


def count_flops(fn, *args) -> float:
    """FLOPs of one call of `fn(*args)` (args may be ShapeDtypeStructs)."""
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)

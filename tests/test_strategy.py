"""What Chain.plan() reports is what runs.

Every product records the Strategy record (gradchain._bracket) that its
executor ran and which executor that was (ChainCore._last_strategy()).  For
every mode and a spread of chains -- shared dense, narrow links where
pre-multiplying wins, structured, per-sample, mixed, stacked -- the plan
rendered by Chain.plan() must be that very record, the executor must be the
one the record's order implies, and the result must match NumPy.
"""
import numpy as np
import pytest

import gradchain as gc
from gradchain.chain import _expression, _factor_names


def _chains(rng):
    n = 12
    yield "dense", [rng.standard_normal((n, n)) for _ in range(5)]
    # a narrow link in the middle: pre-multiplying it saves work for a block
    yield "narrow", [rng.standard_normal((40, 40)), rng.standard_normal((2, 40)),
                     rng.standard_normal((40, 2)), rng.standard_normal((40, 40))]
    # widening then narrowing: right to left can win for a jacobian
    yield "funnel", [rng.standard_normal((3, 50)), rng.standard_normal((60, 3)),
                     rng.standard_normal((70, 60)), rng.standard_normal((2, 70))]
    yield "structured", [rng.standard_normal((n, n)), gc.Diagonal(rng.standard_normal(n)),
                         gc.Identity(n), gc.Identity(n, scale=2.0),
                         gc.DiagonalPlusRankOne(rng.standard_normal(n), rng.standard_normal(n),
                                                rng.standard_normal(n), 0.5),
                         rng.standard_normal((5, n))]
    yield "stack", rng.standard_normal((6, n, n))
    yield "per-sample", [rng.standard_normal((7, n, 9)), rng.standard_normal((7, 4, n))]
    yield "mixed", [rng.standard_normal((n, 9)), rng.standard_normal((7, n, n)),
                    gc.Diagonal(rng.standard_normal(n)), rng.standard_normal((3, n))]
    yield "long", [rng.standard_normal((4, 4)) for _ in range(40)]


def _dense(J):
    return J.todense() if isinstance(J, gc.Operator) else np.asarray(J)


def _reference(links, mode, X):
    """NumPy: the product, per sample where a link is per sample."""
    Js = [_dense(J) for J in links]
    B = next((J.shape[0] for J in Js if J.ndim == 3), None)
    if mode == "jacobian":
        out = None
        for J in Js:
            out = J if out is None else J @ out
        return out
    rows = []
    for b in range(X.shape[0]):
        v = X[b]
        seq = Js[::-1] if mode == "vjp" else Js
        for J in seq:
            Jb = J[b] if J.ndim == 3 else J
            v = Jb.T @ v if mode == "vjp" else Jb @ v
        rows.append(v)
    return np.array(rows)


def _expected_executor(s, mode):
    if mode == "jacobian":
        return "samples" if s.per_sample else "accumulate"
    return "propagate" if s.order_name == "left" else "accumulate"


def _check(chain, links, mode, batch, rng):
    plan = chain.plan(batch=batch, mode=mode)
    if mode == "jacobian":
        got = chain.jacobian()
        want = _reference(links, mode, None)
        B = 0
    else:
        width = chain.output_dim if mode == "vjp" else chain.input_dim
        X = rng.standard_normal((batch, width))
        got = chain.vjp(X) if mode == "vjp" else chain.jvp(X)
        want = _reference(links, mode, X)
        B = batch
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    s, ran = chain._last_strategy()
    # the very record the plan rendered
    assert s is chain._strategy_of(mode, B)
    assert s.mode == mode and s.batch == B
    assert plan.cost == s.cost
    assert plan.baseline_costs == {"left_to_right": s.l2r, "right_to_left": s.r2l}
    order = s.table if s.table is not None else s.order_name
    assert plan.expression == _expression(order, _factor_names(len(chain), mode, batch))
    # and the executor the record's order implies ran
    assert ran == _expected_executor(s, mode)
    return s, ran


@pytest.mark.parametrize("mode", ["vjp", "jvp", "jacobian"])
def test_plan_is_what_runs(rng, mode):
    seen = set()
    for name, links in _chains(rng):
        chain = gc.Chain(links)
        batches = [chain.batch] if chain.batch is not None else [1, 3, 64]
        if mode == "jacobian":
            batches = [0]
        for batch in batches:
            s, ran = _check(chain, links if not isinstance(links, np.ndarray)
                            else list(links), mode, batch, rng)
            seen.add((ran, s.order_name))
    # the spread really covers the executors
    if mode == "jacobian":
        assert {r for r, _ in seen} == {"accumulate", "samples"}
        assert {o for _, o in seen} >= {"table", "left"}
    else:
        assert {r for r, _ in seen} == {"propagate", "accumulate"}


def test_a_repeated_product_reuses_the_record(rng):
    chain = gc.Chain([rng.standard_normal((40, 40)), rng.standard_normal((2, 40)),
                      rng.standard_normal((40, 2)), rng.standard_normal((40, 40))])
    G = rng.standard_normal((64, 40))
    chain.vjp(G)
    first = chain._last_strategy()[0]
    chain.vjp(G)
    assert chain._last_strategy()[0] is first
    assert chain._last_strategy()[1] == "accumulate"


def test_shortcuts_record_no_strategy(rng):
    # zero-width intermediates, the empty chain and promotion decide
    # nothing: they say so
    c = gc.Chain([np.ones((0, 3)), np.ones((2, 0))])
    c.vjp(np.ones(2))
    assert c._last_strategy() == (None, "zeros")
    e = gc.Chain([])
    e.vjp(np.ones(3))
    assert e._last_strategy() == (None, "copy")
    f = gc.Chain([np.ones((2, 2), np.float32), gc.Diagonal(np.ones(2, np.float32))])
    f.vjp(np.ones(2))
    assert f._last_strategy() == (None, "promoted")
    # dense float32 links with a float64 vector: the mixed kernels, which
    # run the propagation plan they record
    m = gc.Chain([np.ones((2, 2), np.float32)])
    m.vjp(np.ones(2))
    s, ran = m._last_strategy()
    assert ran == "mixed" and "order='left'" in repr(s)

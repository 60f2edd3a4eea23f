"""linear_sum_assignment (device = optax Hungarian, scipy = host callback) against scipy on the
valid sub-matrix (float64) and against brute force over all matchings."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from mlx_research.ops.matching import linear_sum_assignment, matcher

METHODS = ("device", "scipy")
BATCH = 300


@functools.cache
def _batched(method, maximize):
    """One jitted, vmapped matcher per (method, maximize); jit caches one program per shape."""
    fn = functools.partial(linear_sum_assignment, maximize=maximize, method=method)
    return jax.jit(jax.vmap(lambda c, r, k: fn(c, valid_rows=r, valid_cols=k)))


def _problems(seed, n, m, batch=BATCH):
    """Random costs and masks: half integer costs in {0, 1, 2} (many ties), half floats of
    random scale; masks from all-valid to all-padded, padded entries holding NaN or +-1e9."""
    rng = np.random.default_rng(seed)
    ints = rng.integers(0, 3, (batch, n, m)).astype(np.float32)
    scale = 10.0 ** rng.uniform(-2, 4, (batch, 1, 1))
    floats = (rng.normal(size=(batch, n, m)) * scale).astype(np.float32)
    is_int = np.arange(batch) % 2 == 0
    cost = np.where(is_int[:, None, None], ints, floats)
    keep = rng.uniform(size=(batch, 1))
    valid_rows = rng.uniform(size=(batch, n)) < keep
    valid_cols = rng.uniform(size=(batch, m)) < rng.uniform(size=(batch, 1))
    valid_rows[: batch // 4] = True  # unmasked problems
    valid_cols[: batch // 4] = True
    both = valid_rows[:, :, None] & valid_cols[:, None, :]
    filler = rng.choice(np.array([np.nan, 1e9, -1e9], np.float32), size=(batch, 1, 1))
    padded = np.where(both, cost, filler).astype(np.float32)
    return cost, padded, valid_rows, valid_cols, is_int


def _scipy_optimum(cost, valid_rows, valid_cols, maximize):
    """(optimal total, number of pairs) of the valid sub-matrix, float64 scipy."""
    sub = cost[np.ix_(np.flatnonzero(valid_rows), np.flatnonzero(valid_cols))].astype(np.float64)
    if sub.size == 0:
        return 0.0, 0
    r, c = scipy.optimize.linear_sum_assignment(sub, maximize=maximize)
    return sub[r, c].sum(), len(r)


def _brute_optimum(cost, valid_rows, valid_cols, maximize):
    """(optimal total, number of pairs) by enumerating every matching of the valid entries."""
    sub = cost[np.ix_(np.flatnonzero(valid_rows), np.flatnonzero(valid_cols))].astype(np.float64)
    if sub.shape[0] > sub.shape[1]:
        sub = sub.T
    r, c = sub.shape
    if r == 0:
        return 0.0, 0
    totals = [sub[np.arange(r), list(p)].sum() for p in itertools.permutations(range(c), r)]
    return (max(totals) if maximize else min(totals)), r


def _check_matching(cost, valid_rows, valid_cols, rows, cols, maximize, exact, optimum):
    """A valid, sorted, -1-padded matching of valid entries whose total is the optimum."""
    n, m = cost.shape
    assert rows.shape == cols.shape == (min(n, m),)
    assert rows.dtype == cols.dtype == np.int32
    want_total, want_pairs = optimum(cost, valid_rows, valid_cols, maximize)
    k = int((rows >= 0).sum())
    assert k == want_pairs
    assert (rows[k:] == -1).all() and (cols[k:] == -1).all()  # padding only at the end
    assert (cols[:k] >= 0).all()
    assert (np.diff(rows[:k]) > 0).all()  # sorted by row, no row twice
    assert len(set(cols[:k].tolist())) == k  # no column twice
    assert valid_rows[rows[:k]].all() and valid_cols[cols[:k]].all()
    total = cost[rows[:k], cols[:k]].astype(np.float64).sum()
    if exact:
        assert total == want_total
    else:
        bound = np.abs(cost[valid_rows][:, valid_cols]).sum() if k else 0.0
        np.testing.assert_allclose(total, want_total, rtol=0, atol=1e-6 * bound + 1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("n", "m", "maximize"), [(5, 5, False), (4, 7, False), (7, 4, True)])
@pytest.mark.slow
def test_optimal_matching_vs_scipy(method, n, m, maximize):
    cost, padded, valid_rows, valid_cols, is_int = _problems(n * 10 + m, n, m)
    rows, cols = map(np.asarray, _batched(method, maximize)(padded, valid_rows, valid_cols))
    assert {"r<c", "r>c", "empty"} <= {  # the batch covers both orientations and no pairs
        "empty" if (r == 0 or c == 0) else ("r<c" if r < c else ("r>c" if r > c else "r=c"))
        for r, c in zip(valid_rows.sum(1), valid_cols.sum(1))}
    for b in range(BATCH):
        _check_matching(cost[b], valid_rows[b], valid_cols[b], rows[b], cols[b], maximize,
                        exact=is_int[b], optimum=_scipy_optimum)


@pytest.mark.parametrize("method", METHODS)
def test_optimal_matching_vs_brute_force(method):
    cost, padded, valid_rows, valid_cols, is_int = _problems(7, 5, 5, batch=BATCH)
    rows, cols = map(np.asarray, _batched(method, False)(padded, valid_rows, valid_cols))
    for b in range(0, BATCH, 3):
        _check_matching(cost[b], valid_rows[b], valid_cols[b], rows[b], cols[b], False,
                        exact=is_int[b], optimum=_brute_optimum)


@pytest.mark.parametrize("method", METHODS)
def test_known_answer(method):
    # optax's docstring example: the unique optimum 8 + 3 + 4 = 15 with row 2 left out.
    cost = np.array([[8, 4, 7], [5, 2, 3], [9, 6, 7], [9, 4, 8]], np.int32)
    rows, cols = jax.jit(matcher(method))(cost)
    np.testing.assert_array_equal(rows, [0, 1, 3])
    np.testing.assert_array_equal(cols, [0, 2, 1])
    wide = cost.T.copy()
    wide[0, 0] = 7  # unique maximum 9 + 6 + 7 = 22
    rows, cols = jax.jit(matcher(method), static_argnums=1)(wide, True)
    np.testing.assert_array_equal(rows, [0, 1, 2])
    np.testing.assert_array_equal(cols, [3, 2, 0])


@pytest.mark.parametrize("method", METHODS)
def test_padding_values_do_not_matter(method):
    cost, _, valid_rows, valid_cols, _ = _problems(3, 5, 5)
    both = valid_rows[:, :, None] & valid_cols[:, None, :]
    fn = _batched(method, False)
    results = [np.asarray(fn(np.where(both, cost, fill).astype(np.float32), valid_rows,
                             valid_cols)) for fill in (-1e9, 0.0, np.nan)]
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


@pytest.mark.parametrize("method", METHODS)
def test_forbidden_pairs_and_masked_rows(method):
    inf = np.inf
    cost = np.array([[inf, 1, 2], [3, inf, 1], [1, 2, inf], [-5, -5, -4]], np.float32)
    fn = jax.jit(lambda c, r, k: linear_sum_assignment(c, valid_rows=r, valid_cols=k,
                                                        method=method))
    everything = np.ones(3, bool)
    rows, cols = fn(cost, np.array([True, True, True, False]), everything)  # row 3 is padding
    np.testing.assert_array_equal(rows, [0, 1, 2])
    np.testing.assert_array_equal(cols, [1, 2, 0])
    rows, cols = fn(cost, np.ones(4, bool), np.array([False, True, True]))
    np.testing.assert_array_equal(rows, [1, 3, -1])  # 1 - 5 beats 1 - 4 and 2 - 5
    np.testing.assert_array_equal(cols, [2, 1, -1])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.slow
def test_nested_vmap_and_unbatched_mask(method):
    cost, _, _, valid_cols, is_int = _problems(11, 3, 4, batch=12)
    cost, valid_cols = cost.reshape(3, 4, 3, 4), valid_cols.reshape(3, 4, 4)
    valid_rows = np.array([True, False, True])  # shared by the whole batch
    fn = functools.partial(linear_sum_assignment, method=method)
    inner = jax.vmap(lambda c, k: fn(c, valid_rows=valid_rows, valid_cols=k))
    rows, cols = map(np.asarray, jax.jit(jax.vmap(inner))(cost, valid_cols))
    for a, b in np.ndindex(3, 4):
        _check_matching(cost[a, b], valid_rows, valid_cols[a, b], rows[a, b], cols[a, b], False,
                        exact=is_int[a * 4 + b], optimum=_scipy_optimum)


@pytest.mark.parametrize("method", METHODS)
def test_empty_inputs(method):
    for shape in [(0, 3), (3, 0), (0, 0)]:
        rows, cols = linear_sum_assignment(jnp.zeros(shape), method=method)
        assert rows.shape == cols.shape == (0,) and rows.dtype == cols.dtype == jnp.int32
    rows, cols = jax.jit(functools.partial(linear_sum_assignment, method=method))(
        jnp.ones((2, 3)), valid_cols=jnp.zeros(3, bool))
    np.testing.assert_array_equal(rows, [-1, -1])
    np.testing.assert_array_equal(cols, [-1, -1])


@pytest.mark.parametrize("method", METHODS)
def test_gradient_flows_through_gathered_costs_only(method):
    def matched_cost(c):
        rows, cols = linear_sum_assignment(c, valid_cols=jnp.array([True, True, False]),
                                           method=method)
        return jnp.where(rows >= 0, c[rows, cols], 0.0).sum()

    cost = jnp.array([[[1.0, 3.0, -9.0], [5.0, 3.0, -9.0], [4.0, 9.0, -9.0]],
                      [[5.0, 1.0, -9.0], [1.0, 5.0, -9.0], [3.0, 3.0, -9.0]]])
    grads = jax.jit(jax.vmap(jax.grad(matched_cost)))(cost)
    # unique optima: rows 0, 1 -> cols 0, 1 (1 + 3) and rows 0, 1 -> cols 1, 0 (1 + 1)
    want = np.zeros((2, 3, 3))
    want[0, 0, 0] = want[0, 1, 1] = want[1, 0, 1] = want[1, 1, 0] = 1.0
    np.testing.assert_array_equal(grads, want)


def test_matcher_lookup():
    cost = np.array([[2.0, 1.0], [1.0, 2.0]], np.float32)
    rows, cols = matcher("scipy")(cost)  # eager, outside jit
    np.testing.assert_array_equal(cols, [1, 0])
    rows, cols = jax.jit(matcher("device"))(cost)
    np.testing.assert_array_equal(cols, [1, 0])
    with pytest.raises(ValueError, match="unknown matcher 'greedy'"):
        matcher("greedy")
    with pytest.raises(ValueError, match="unknown matcher"):
        linear_sum_assignment(cost, method="hungarian")
    with pytest.raises(ValueError, match="valid_rows must have shape"):
        linear_sum_assignment(cost, valid_rows=np.ones(3, bool))
    with pytest.raises(ValueError, match=r"cost must be \[N, M\]"):
        linear_sum_assignment(np.ones((2, 2, 2)))

"""``python -m gradchain``: a demo of the gradient chain rule on a built-in chain.

The embedded default chain is a 24-layer tanh network on R^16,

    x^(i) = tanh(W_i x^(i-1)),   L = 1/2 ||x^(k)||^2,

whose Jacobians are J_i = diag(1 - x^(i)^2) W_i.  The demo computes
grad_x L = J_1^T ... J_k^T x^(k) with gradchain, checks it against central
finite differences of L, checks a JVP against a directional difference, and
times gradchain against the plain NumPy loop ``g = J.T @ g``.

Exit status 0 when both checks pass, 1 otherwise.
"""
import argparse
import sys
import timeit

import numpy as np

import gradchain

N, K, SEED = 16, 24, 20261126


def default_chain():
    """The embedded chain: weights, input point, intermediates, Jacobians."""
    rng = np.random.default_rng(SEED)
    Ws = [rng.standard_normal((N, N)) * (1.2 / np.sqrt(N)) for _ in range(K)]
    x = rng.standard_normal(N)
    xs = [x]
    for W in Ws:
        xs.append(np.tanh(W @ xs[-1]))
    Js = [(1.0 - xi * xi)[:, None] * W for W, xi in zip(Ws, xs[1:])]
    return Ws, x, xs, Js


def loss(Ws, x):
    for W in Ws:
        x = np.tanh(W @ x)
    return 0.5 * float(x @ x)


def _best_us(fn, number):
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gradchain",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="shorter timings (for tests)")
    args = parser.parse_args(argv)

    Ws, x, xs, Js = default_chain()
    chain = gradchain.Chain(Js)
    g = xs[-1]                      # dL/dx^(k) for L = 1/2 ||x^(k)||^2
    grad = chain.vjp(g)

    # Central finite differences of L, one coordinate at a time.
    eps = 1e-6
    fd = np.empty(N)
    for j in range(N):
        e = np.zeros(N)
        e[j] = eps
        fd[j] = (loss(Ws, x + e) - loss(Ws, x - e)) / (2 * eps)
    grad_err = np.max(np.abs(grad - fd)) / np.max(np.abs(fd))

    # JVP: J v against a directional central difference of the map.
    v = np.linspace(-1.0, 1.0, N)

    def fwd(z):
        for W in Ws:
            z = np.tanh(W @ z)
        return z

    jv = chain.jvp(v)
    fd_jv = (fwd(x + eps * v) - fwd(x - eps * v)) / (2 * eps)
    jvp_err = np.max(np.abs(jv - fd_jv)) / np.max(np.abs(fd_jv))

    print(f"gradchain {gradchain.__version__}: {chain!r}")
    print(f"  kernels: {gradchain.simd_target()}, "
          f"OpenMP {'on' if gradchain.openmp_enabled() else 'off'}, "
          f"{gradchain.get_num_threads()} thread(s)")
    print(f"  L(x) = {loss(Ws, x):.6g}")
    print(f"  |grad L| = {np.linalg.norm(grad):.6g}; max rel. error vs "
          f"central differences: {grad_err:.1e}")
    print(f"  JVP max rel. error vs directional difference: {jvp_err:.1e}")

    def numpy_loop():
        h = g
        for J in reversed(Js):
            h = J.T @ h
        return h

    number = 200 if args.quick else 2000
    t_np = _best_us(numpy_loop, number)
    t_one = _best_us(lambda: gradchain.vjp(Js, g), number)
    t_chain = _best_us(lambda: chain.vjp(g), number)
    assert np.allclose(numpy_loop(), grad, rtol=1e-12, atol=1e-14)
    print(f"\n  J_1^T ... J_{K}^T g, {K} links of {N}x{N}, float64 "
          f"(best of 7, per call):")
    print(f"    {'NumPy loop  g = J.T @ g':<30}{t_np:9.2f} us   1.0x")
    print(f"    {'gradchain.vjp(Js, g)':<30}{t_one:9.2f} us "
          f"{t_np / t_one:5.1f}x")
    print(f"    {'Chain(Js).vjp(g), prebuilt':<30}{t_chain:9.2f} us "
          f"{t_np / t_chain:5.1f}x")

    ok = grad_err < 1e-6 and jvp_err < 1e-6
    print("\n  gradient check: " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

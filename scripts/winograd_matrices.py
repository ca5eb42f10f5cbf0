#!/usr/bin/env python3
"""Derive the Winograd F(m, r) transform matrices that csrc/ hard-codes, in exact rationals.

    scripts/winograd_matrices.py            # F(2,3) and F(2,5): B^T, G, A^T and the check
    scripts/winograd_matrices.py --json     # the same as JSON (tests/test_c_engine.py reads it)

The 1-D algorithm is Toom-Cook run backwards (Lavin & Gray 2016). Correlating d (n = m + r - 1
values) with g (r taps) is the transpose of multiplying the polynomials g(x) (degree r - 1) and
h(x) (degree m - 1): evaluate both at the points p_0 .. p_{n-2} and infinity (the leading
coefficient), multiply pointwise, interpolate. With N_j = prod_{l != j} (p_j - p_l) over the
finite points and M(x) = prod_l (x - p_l):

    A^T[i][j] = p_j^i                  A^T[i][inf] = 1 if i == m - 1 else 0
    G[j][k]   = p_j^k / N_j            G[inf][k]   = 1 if k == r - 1 else 0
    B^T[j]    = coefficients of M(x) / (x - p_j)    B^T[inf] = coefficients of M(x)

so that y = A^T [(G g) * (B^T d)] is y_i = sum_k g_k d_{i+k}; in 2-D, Y = A^T [(G g G^T) *
(B^T d B)] A. Any column j may be scaled in A^T, G or B^T as long as the product of the three
scales is 1: `derive` moves the scales so that A^T and B^T hold small integers (or halves) and
G the fractions (applied once per kernel, not per tile).

The points: F(2,3) uses 0, 1, -1, inf (csrc/tmpl_microkernel.h's MK_WINO_*); F(2,5) uses
0, 1, -1, 1/2, -1/2, inf (MK_WINO5_*): every entry is a power of two times a small integer,
so the transforms are exact in binary apart from the roundings of their sums. The identity is
checked exactly below for every pair of basis vectors.
"""
import argparse
import json
from fractions import Fraction as Fr

POINTS = {
    (2, 3): [Fr(0), Fr(1), Fr(-1)],
    (2, 5): [Fr(0), Fr(1), Fr(-1), Fr(1, 2), Fr(-1, 2)],
}


def _poly_mul(a, b):
    out = [Fr(0)] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


def _poly_from_roots(roots):
    """Coefficients (lowest power first) of prod (x - r)."""
    poly = [Fr(1)]
    for r in roots:
        poly = _poly_mul(poly, [-r, Fr(1)])
    return poly


def derive(m, r, points=None):
    """(BT n x n, G n x r, AT m x n) as lists of Fractions, n = m + r - 1, for F(m, r)."""
    pts = list(points if points is not None else POINTS[(m, r)])
    n = m + r - 1
    if len(pts) != n - 1:
        raise ValueError(f"F({m},{r}) needs {n - 1} finite points, got {len(pts)}")
    AT = [[p ** i for p in pts] + [Fr(int(i == m - 1))] for i in range(m)]
    G, BT = [], []
    for j, p in enumerate(pts):
        others = pts[:j] + pts[j + 1:]
        N = Fr(1)
        for q in others:
            N *= p - q
        G.append([p ** k / N for k in range(r)])
        BT.append(_poly_from_roots(others) + [Fr(0)])
    G.append([Fr(int(k == r - 1)) for k in range(r)])
    BT.append(_poly_from_roots(pts))
    # Move each row's scale of B^T into G: B^T rows become integers with no common factor and a
    # positive first nonzero entry (the transform per tile stays additions and small multiples).
    for j in range(n):
        nz = [x for x in BT[j] if x != 0]
        den = 1
        for x in nz:
            den = den * x.denominator // _gcd(den, x.denominator)
        ints = [int(x * den) for x in BT[j]]
        g = 0
        for x in ints:
            g = _gcd(g, abs(x))
        scale = Fr(den, g) * (1 if next(x for x in ints if x) > 0 else -1)
        BT[j] = [x * scale for x in BT[j]]
        G[j] = [x / scale for x in G[j]]
    return BT, G, AT


def _gcd(a, b):
    while b:
        a, b = b, a % b
    return a


def check(m, r, BT, G, AT):
    """Exact check of sum_j AT[i][j] G[j][k] BT[j][l] == [l == i + k] for every i, k, l: the
    bilinear identity y = A^T[(G g) * (B^T d)] for every pair of basis vectors g and d."""
    n = m + r - 1
    for i in range(m):
        for k in range(r):
            for l in range(n):
                s = sum(AT[i][j] * G[j][k] * BT[j][l] for j in range(n))
                if s != (1 if l == i + k else 0):
                    return False
    return True


def _fmt(x):
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _table(name, rows):
    lines = [f"{name} =", *("  [" + ", ".join(f"{_fmt(x):>6}" for x in row) + "]" for row in rows)]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the matrices as JSON strings")
    args = ap.parse_args()
    out, ok = {}, True
    for (m, r) in sorted(POINTS):
        BT, G, AT = derive(m, r)
        good = check(m, r, BT, G, AT)
        ok &= good
        out[f"F({m},{r})"] = {"BT": [[_fmt(x) for x in row] for row in BT],
                              "G": [[_fmt(x) for x in row] for row in G],
                              "AT": [[_fmt(x) for x in row] for row in AT], "exact": good}
        if not args.json:
            pts = ", ".join(_fmt(p) for p in POINTS[(m, r)]) + ", inf"
            print(f"F({m}x{m}, {r}x{r}): points {pts}; identity exact: {good}")
            print(_table("B^T", BT))
            print(_table("G", G))
            print(_table("A^T", AT))
            print()
    if args.json:
        print(json.dumps(out, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

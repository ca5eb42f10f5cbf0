"""Is a change slower? Time two (or more) checkouts of minicnn side by side in one run.

    python benchmarks/compare_checkouts.py --rounds 7 ../minicnn-before .
    python benchmarks/compare_checkouts.py --engines minicnn-c minicnn-numpy -- OLD NEW
    python benchmarks/compare_checkouts.py --arch lenet5 stride2 -- OLD NEW

Each round runs this repository's bench_train.py once per checkout (--inner-rounds timed sweeps,
no memory measurement), in a fresh process importing that checkout's minicnn (MINICNN_HOME), alternating
the order every round so that a slow spell of this shared machine hits every checkout alike.
Every checkout must have its C engine built in place (`python setup.py build_ext --inplace`).
Prints, per row and engine, the median images/s of each checkout and its ratio to the first.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_train.py")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", help="folders holding minicnn/ (the first is the reference)")
    parser.add_argument("--rounds", type=int, default=5, help="processes per checkout, alternating (median)")
    parser.add_argument("--inner-rounds", type=int, default=3,
                        help="timed sweeps inside each process (bench_train.py --rounds; its median)")
    parser.add_argument("--engines", nargs="+", default=["minicnn-c"], help="bench_train.py's engines")
    parser.add_argument("--threads", type=int, default=2, help="bench_train.py's --threads")
    parser.add_argument("--arch", nargs="+", default=[], metavar="NAME",
                        help="bench_train.py's --arch: add these architectures' rows")
    args = parser.parse_args(argv)
    for checkout in args.checkouts:
        # bench_train imports minicnn from MINICNN_HOME: a folder without one would quietly fall
        # back to the installed minicnn and compare a checkout with itself
        if not os.path.isfile(os.path.join(checkout, "minicnn", "__init__.py")):
            parser.error(f"{checkout} holds no minicnn/ package")
    if len({os.path.realpath(checkout) for checkout in args.checkouts}) != len(args.checkouts):
        parser.error("each checkout may be named once (their figures would be merged)")
    if args.rounds < 1 or args.inner_rounds < 1:
        parser.error("--rounds and --inner-rounds must be at least 1")
    samples = {}
    for round_index in range(args.rounds):
        order = args.checkouts if round_index % 2 == 0 else args.checkouts[::-1]
        for checkout in order:
            with tempfile.TemporaryDirectory() as scratch:
                out = os.path.join(scratch, "figures.json")
                subprocess.run([sys.executable, BENCH, "--rounds", str(args.inner_rounds), "--no-memory",
                                "--threads", str(args.threads),
                                "--json", out, "--engines", *args.engines,
                                *(["--arch", *args.arch] if args.arch else [])],
                               check=True, stdout=subprocess.DEVNULL,
                               env={**os.environ, "MINICNN_HOME": os.path.abspath(checkout)})
                with open(out) as handle:
                    figures = json.load(handle)["figures"]
            for figure in figures:
                key = (figure["row"], figure["engine"])
                samples.setdefault(key, {}).setdefault(checkout, []).append(figure["images_per_s"])
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"images/s, medians of {args.rounds} rounds; ratio = checkout / {args.checkouts[0]}")
    print("| row | engine | " + " | ".join(args.checkouts) + " | ratio |")
    print("|---|---|" + "---:|" * (len(args.checkouts) + 1))
    for (row, engine), per_checkout in samples.items():
        medians = [statistics.median(per_checkout[c]) for c in args.checkouts]
        ratios = ", ".join(f"{m / medians[0]:.3f}" for m in medians[1:])
        print(f"| {row} | {engine} | " + " | ".join(f"{m:,.0f}" for m in medians) + f" | {ratios} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every HumanEval canonical solution through the sandbox and print the count.

The figure of issue 5: it must print ``164/164``. Usage::

    python benchmarks/humaneval_canonical.py [--workers 4] [--timeout 20]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from tide_lightning.evaluation import humaneval_program, load_humaneval
from tide_lightning.evaluation.sandbox import check_program, sandbox_capabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    print(f"sandbox: {sandbox_capabilities()}")
    problems = load_humaneval()
    start = time.perf_counter()

    def run(problem):
        source = humaneval_program(problem, problem["canonical_solution"])
        return check_program(source, timeout=args.timeout)

    with ThreadPoolExecutor(args.workers) as pool:
        results = list(pool.map(run, problems))
    elapsed = time.perf_counter() - start
    for problem, result in zip(problems, results, strict=True):
        if not result.passed:
            print(f"{problem['task_id']}: {result.status} {result.detail}")
    passed = sum(r.passed for r in results)
    print(f"HumanEval canonical solutions passed: {passed}/{len(problems)}")
    print(
        f"time: {elapsed:.1f} s with {args.workers} workers ({elapsed / len(problems):.3f} s each)"
    )


if __name__ == "__main__":
    main()

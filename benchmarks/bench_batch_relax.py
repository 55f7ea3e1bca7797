"""Throughput of batched relaxation (relax_batch) against one-at-a-time ASE relaxations.

Both relax the same rattled structures (Cu(111) 2x2x3 slabs with an O adsorbate, 13 atoms,
by default) with the same optimizer for the same number of steps, with the same calculator,
in the same run. The baseline is plain ASE: ``atoms.calc = calc; FIRE(atoms).run(...)`` for
one structure after another.

With an untrained fixture checkpoint the forces are random-ish, so runs rarely converge; the
default ``--fmax`` is tiny so that both sides do exactly ``--steps`` steps per structure and
the comparison is of equal work. The table reports structures/s, optimizer steps/s and model
calls, and checks that both sides end at the same energies.

Examples::

    python benchmarks/bench_batch_relax.py                      # fixture EquiformerV2 model
    python benchmarks/bench_batch_relax.py --calc emt           # ASE's EMT (nothing to gain)
    python benchmarks/bench_batch_relax.py --device cuda --n 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "tests" / "data" / "eqv2" / "checkpoints" / "eq2_small_oc20_classic.pt"


def make_structures(n: int, rattle: float, kind: str, seed: int) -> list:
    from ase.build import add_adsorbate, bulk, fcc111
    from ase.constraints import FixAtoms

    out = []
    for k in range(n):
        if kind == "slab":
            atoms = fcc111("Cu", (2, 2, 3), vacuum=6.0)
            add_adsorbate(atoms, "O", 1.6, "fcc")
            atoms.set_constraint(FixAtoms(indices=[a.index for a in atoms if a.tag == 3]))
        else:
            atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
        atoms.rattle(rattle, seed=seed + k)
        out.append(atoms)
    return out


def make_calculator(args: argparse.Namespace):
    if args.calc == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    from eqv2calc.calculator import EquiformerV2Calculator

    return EquiformerV2Calculator(model=args.model, device=args.device, dtype=args.dtype)


class _CallCounter:
    """Counts model calls: outermost calls of ``calculate`` or ``predict_batch``.

    (``EquiformerV2Calculator.calculate`` itself calls ``predict_batch``; that counts once.)
    """

    def __init__(self, calc):
        self.calc = calc
        self.calls = 0
        self._depth = 0
        for name in ("calculate", "predict_batch"):
            original = getattr(calc, name, None)
            if original is not None:
                setattr(calc, name, self._wrap(original))

    def _wrap(self, fn):
        def wrapped(*a, **kw):
            if self._depth == 0:
                self.calls += 1
            self._depth += 1
            try:
                return fn(*a, **kw)
            finally:
                self._depth -= 1

        return wrapped


def run_sequential(structures, calc, args) -> tuple[float, list[float], list[int]]:
    import ase.optimize

    opt_class = getattr(ase.optimize, args.optimizer)
    energies, steps = [], []
    t0 = time.perf_counter()
    for atoms in structures:
        work = atoms.copy()
        work.calc = calc
        opt = opt_class(work, logfile=None)
        opt.run(fmax=args.fmax, steps=args.steps)
        energies.append(float(work.get_potential_energy()))
        steps.append(int(opt.nsteps))
        work.calc = None
    return time.perf_counter() - t0, energies, steps


def run_batched(structures, calc, args) -> tuple[float, list[float], list[int]]:
    from eqv2calc.drivers import relax_batch

    t0 = time.perf_counter()
    results = relax_batch(
        structures,
        calc,
        optimizer=args.optimizer,
        fmax=args.fmax,
        steps=args.steps,
        max_atoms_per_batch=args.max_atoms,
        progress=False,
    )
    elapsed = time.perf_counter() - t0
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"batched relaxation failed: {errors[0]}")
    return elapsed, [r.final_energy for r in results], [r.steps for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calc", choices=["eqv2", "emt"], default="eqv2")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint or registry name")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--n", type=int, default=16, help="number of structures")
    parser.add_argument("--structure", choices=["slab", "bulk"], default="slab")
    parser.add_argument("--rattle", type=float, default=0.1, help="rattle amplitude, Å")
    parser.add_argument("--optimizer", default="FIRE", choices=["FIRE", "LBFGS", "BFGS"])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per structure")
    parser.add_argument("--fmax", type=float, default=1e-6, help="eV/Å (tiny: fixed work)")
    parser.add_argument("--max-atoms", type=int, default=100_000, help="batch budget, atoms")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", default=None, help="write results here")
    args = parser.parse_args()

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    structures = make_structures(args.n, args.rattle, args.structure, args.seed)
    calc = make_calculator(args)
    counter = _CallCounter(calc)

    # warm-up (model caches, allocator) on both paths
    run_sequential(structures[:1], calc, argparse.Namespace(**{**vars(args), "steps": 1}))
    run_batched(structures[:2], calc, argparse.Namespace(**{**vars(args), "steps": 1}))

    seq_times, bat_times = [], []
    seq_calls = bat_calls = 0
    for _ in range(args.repeats):  # interleaved, so machine load affects both alike
        counter.calls = 0
        t, seq_e, seq_steps = run_sequential(structures, calc, args)
        seq_times.append(t)
        seq_calls = counter.calls
        counter.calls = 0
        t, bat_e, bat_steps = run_batched(structures, calc, args)
        bat_times.append(t)
        bat_calls = counter.calls

    t_seq, t_bat = statistics.median(seq_times), statistics.median(bat_times)
    n_atoms = len(structures[0])
    rows = [
        ("one-at-a-time ASE", t_seq, sum(seq_steps), seq_calls),
        ("relax_batch", t_bat, sum(bat_steps), bat_calls),
    ]
    de = float(np.max(np.abs(np.array(seq_e) - np.array(bat_e))))
    same_steps = sum(a == b for a, b in zip(seq_steps, bat_steps))
    calc_name = args.calc if args.calc == "emt" else f"eqv2 {Path(args.model).name}"
    print(
        f"{args.n} x {n_atoms}-atom {args.structure}, {args.optimizer}, {args.steps} steps max, "
        f"calculator {calc_name} on {args.device} ({args.dtype})"
    )
    print(f"{'method':<20} {'time[s]':>9} {'struct/s':>9} {'steps/s':>9} {'model calls':>12}")
    for name, t, steps, calls in rows:
        print(f"{name:<20} {t:9.2f} {args.n / t:9.2f} {steps / t:9.1f} {calls:12d}")
    print(f"speed-up (batched/sequential throughput): {t_seq / t_bat:.2f}x")
    print(
        f"final energies: max |dE| = {de:.2e} eV; same step count for {same_steps}/{args.n} "
        "structures"
    )
    print(f"timings of {args.repeats} interleaved repeats: seq {seq_times}, batch {bat_times}")
    if args.json_path:
        data = {
            "settings": {**vars(args), "n_atoms": n_atoms},
            "machine": platform.platform(),
            "sequential": {
                "time_s": t_seq,
                "times_s": seq_times,
                "structures_per_s": args.n / t_seq,
                "steps": sum(seq_steps),
                "model_calls": seq_calls,
            },
            "batched": {
                "time_s": t_bat,
                "times_s": bat_times,
                "structures_per_s": args.n / t_bat,
                "steps": sum(bat_steps),
                "model_calls": bat_calls,
            },
            "speedup": t_seq / t_bat,
            "max_abs_energy_difference_eV": de,
            "same_step_count": same_steps,
        }
        Path(args.json_path).write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()

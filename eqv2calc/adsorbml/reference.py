"""Reference ("DFT") calculations for the top-ranked configurations.

``--dft SPEC`` names any ASE calculator:

* ``emt``: ASE's EMT (a fast stand-in for tests and benchmarks);
* ``vasp``: ASE's VASP calculator with OC20's settings
  (:data:`~eqv2calc.adsorbml.vasp_inputs.OC20_VASP_FLAGS`: RPBE, 350 eV cutoff, ...; NSW = 0
  since ASE drives the ionic steps; OC20's k-point rule per structure), set up through ASE's
  usual environment variables (``ASE_VASP_COMMAND`` or ``VASP_SCRIPT``, and ``VASP_PP_PATH``);
* ``module:function``: ``function()`` (called with ``directory=<out>/dft_run`` if it has a
  ``directory`` parameter) returns an ASE calculator.

Modes: ``sp`` runs one single point per configuration (1 reference call each); ``rx`` relaxes
from the ML geometry with an ASE optimizer (reference calls = ionic steps = optimizer steps + 1)
and the relaxed structure is checked for anomalies again.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

__all__ = [
    "DFT_MODES",
    "ReferenceResult",
    "make_reference_calculator",
    "run_reference",
]

DFT_MODES = ("sp", "rx")


@dataclass
class ReferenceResult:
    """One reference calculation.

    Attributes:
        atoms: final structure (the input for ``sp``), energy/forces attached.
        energy: final energy (eV).
        calls: reference calls spent (1 for ``sp``; ionic steps for ``rx``).
        converged: for ``rx``, whether the relaxation reached ``fmax``; True for ``sp``.
        error: one-line reason on failure, else None.
    """

    atoms: Atoms
    energy: float
    calls: int
    converged: bool = True
    error: str | None = None


def _vasp_calculator(directory: Path) -> Any:
    from ase.calculators.vasp import Vasp

    have_cmd = any(os.environ.get(k) for k in ("ASE_VASP_COMMAND", "VASP_COMMAND", "VASP_SCRIPT"))
    if not have_cmd or not os.environ.get("VASP_PP_PATH"):
        raise ValueError(
            "--dft vasp needs ASE's VASP environment: set ASE_VASP_COMMAND (or VASP_SCRIPT) and "
            "VASP_PP_PATH (see https://wiki.fysik.dtu.dk/ase/ase/calculators/vasp.html)"
        )
    from eqv2calc.adsorbml.vasp_inputs import oc20_vasp_flags

    flags = oc20_vasp_flags("sp")  # NSW = 0: ASE drives the ionic steps
    flags["nelm"] = 60
    return Vasp(
        directory=str(directory),
        setups="minimal",
        lcharg=False,
        kpts=(4, 4, 1),  # replaced per structure by oc20_kpoints
        **flags,
    )


def make_reference_calculator(spec: str, directory: str | os.PathLike = ".") -> tuple[Any, str]:
    """Build the reference calculator named by ``spec``; returns ``(calculator, label)``.

    Raises:
        ValueError: unknown spec, missing VASP environment, or a ``module:function`` that cannot
            be imported or does not return a calculator.
    """
    spec = spec.strip()
    if spec.lower() == "emt":
        from ase.calculators.emt import EMT

        return EMT(), "emt"
    if spec.lower() == "vasp":
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        return _vasp_calculator(d), "vasp"
    if ":" in spec:
        mod_name, func_name = spec.split(":", 1)
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ValueError(f"--dft {spec}: cannot import module {mod_name!r}: {exc}") from exc
        func = getattr(module, func_name, None)
        if func is None or not callable(func):
            raise ValueError(f"--dft {spec}: module {mod_name!r} has no callable {func_name!r}")
        try:
            takes_dir = "directory" in inspect.signature(func).parameters
        except (TypeError, ValueError):
            takes_dir = False
        try:
            calc = func(directory=str(directory)) if takes_dir else func()
        except Exception as exc:  # noqa: BLE001 - reported with the spec
            raise ValueError(f"--dft {spec}: {func_name}() failed: {exc}") from exc
        if not hasattr(calc, "get_potential_energy") and not hasattr(calc, "calculate"):
            raise ValueError(
                f"--dft {spec}: {func_name}() returned {type(calc).__name__}, not an ASE calculator"
            )
        return calc, spec
    raise ValueError(f"unknown --dft {spec!r}: use emt, vasp or module:function")


def run_reference(
    atoms: Atoms,
    calc: Any,
    mode: str,
    *,
    fmax: float = 0.05,
    steps: int = 300,
    optimizer: str = "BFGS",
    label: str = "",
) -> ReferenceResult:
    """Run one reference calculation (``mode`` "sp" or "rx") on a copy of ``atoms``."""
    if mode not in DFT_MODES:
        raise ValueError(f"unknown --dft-mode {mode!r}; use sp or rx")
    work = atoms.copy()
    work.calc = None
    if type(calc).__name__ == "Vasp":
        from eqv2calc.adsorbml.vasp_inputs import oc20_kpoints

        # OC20: NELM 300 for single points, 60 per ionic step of a relaxation
        calc.set(kpts=oc20_kpoints(work), nelm=300 if mode == "sp" else 60)
    try:
        if mode == "sp":
            work.calc = calc
            energy = float(work.get_potential_energy())
            forces = work.get_forces(apply_constraint=False)
            work.calc = SinglePointCalculator(work, energy=energy, forces=forces)
            return ReferenceResult(atoms=work, energy=energy, calls=1)
        from eqv2calc.drivers import relax

        res = relax(work, calc, optimizer=optimizer, fmax=fmax, steps=steps, label=label or None)
        if res.error:
            return ReferenceResult(
                atoms=work, energy=math.nan, calls=res.steps + 1, converged=False, error=res.error
            )
        return ReferenceResult(
            atoms=res.atoms,
            energy=float(res.final_energy),
            calls=int(res.steps) + 1,
            converged=bool(res.converged),
        )
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one failed reference calculation must not end the run
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return ReferenceResult(atoms=work, energy=math.nan, calls=1, converged=False, error=msg)


def finite(x: float | None) -> bool:
    return x is not None and bool(np.isfinite(x))

"""``eqv2calc adsorbml``: AdsorbML adsorption-energy search with an ML model and DFT hand-off."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from eqv2calc.cli._common import (
    EXIT_INTERRUPTED,
    FiniteFloat,
    check_outputs,
    echo_error,
    make_calculator,
    max_atoms_option,
    model_options,
    progress_option,
)
from eqv2calc.cli.campaign import CampaignOptions, campaign_options
from eqv2calc.io import clean_label, lock_directory

_HELP = """Find the lowest-energy configuration of an adsorbate on a surface (AdsorbML).

The adsorbate is placed on every symmetry-distinct on-top, bridge and hollow site and on
--num-random random sites (random rotation about the normal, tilt up to --max-tilt). The
clean slab and every placement are relaxed with the ML model (batched); relaxations that
desorbed, dissociated, changed the surface or intercalated are flagged and dropped; results
that reached the same minimum are merged; the rest are ranked by ML energy. The best
--top-k are written out (extxyz and POSCAR) for DFT, or, with --dft, computed here by a
reference calculator (single points or relaxations) and the reference calls counted against
relaxing every placement.

\b
Slab input (one of):
  --slab FILE          extxyz/traj keep their OC20 tags (0 sub-surface, 1 surface) and
                       fixed atoms; other formats (CIF, POSCAR) get surface atoms detected
                       and sub-surface atoms fixed (override: --surface-depth, --fix-below)
  --bulk FILE --miller H K L
                       slabs cut with pymatgen, one system per termination
\b
Adsorbate: a library name (OC20 set, e.g. O, *OH, CO, *COOH, *CH3, NH2; see
--list-adsorbates) or a structure file with --binding-atoms i,j (0-based).

\b
Outputs in --out (default adsorbml_<slab>_<adsorbate>/):
  adsorbml.db     ASE database: placements, relaxations, anomaly flags, DFT results,
                  written as they finish; rerunning the same command resumes from it
  summary.json    everything in the table below and more (energies, anomalies, calls)
  energies.png    relaxed energies sorted, anomalies marked, top-k highlighted
  topk/<system>/rankN_pidP.extxyz and .vasp (POSCAR)
  vasp/<system>/rankN_pidP/, slab/   with --write-vasp: POSCAR, INCAR, KPOINTS (OC20)

Exit status: 0 done; 1 bad input or a failure; 130 interrupted (results so far are kept).
Units: energies eV, forces eV/Å, lengths Å, angles degrees.
"""


def _parse_binding_atoms(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        idx = [int(t) for t in re.split(r"[,\s]+", text.strip()) if t]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated atom indices like 0,1; got {text!r}"
        ) from None
    if not idx:
        raise click.BadParameter("give at least one index")
    return idx


def _default_out(slab_name: str, ads_name: str) -> Path:
    clean = clean_label(ads_name.replace("*", ""), "", collapse=True, strip="_", fallback="ads")
    return Path(f"adsorbml_{slab_name}_{clean}")


def _list_adsorbates() -> None:
    from eqv2calc.adsorbml.adsorbates import get_adsorbate, list_adsorbates

    click.echo(f"{'name':<14} {'formula':<9} binding atoms   (OC20 set unless marked)")
    for name in list_adsorbates():
        ads = get_adsorbate(name)
        binding = ",".join(ads.symbols[i] for i in ads.binding_indices)
        click.echo(f"{name:<14} {ads.formula:<9} {binding:<15} {'' if ads.oc20 else '(extra)'}")


@click.command("adsorbml", help=_HELP)
@click.option(
    "--slab",
    "slab_file",
    type=click.Path(),
    multiple=True,
    help="Clean slab file, or a folder of them; repeatable (several slabs: a campaign).",
)
@click.option(
    "--bulk", "bulk_file", type=click.Path(dir_okay=False), help="Bulk structure to cut slabs from."
)
@click.option(
    "--miller", nargs=3, type=int, default=None, metavar="H K L", help="Miller index for --bulk."
)
@click.option(
    "--adsorbate",
    "-a",
    multiple=True,
    metavar="NAME|FILE",
    help="Library name as in --list-adsorbates (case-sensitive, '*' on each binding atom; "
    "CO means *CO) or structure file; repeatable (several: a campaign).",
)
@click.option(
    "--binding-atoms",
    default=None,
    metavar="I,J",
    help="Binding atom indices (0-based) for an adsorbate file; required unless the file "
    "has one atom.",
)
@click.option("--list-adsorbates", is_flag=True, help="List the adsorbate library and exit.")
@model_options
@click.option(
    "--optimizer",
    type=click.Choice(["FIRE", "BFGS", "LBFGS"], case_sensitive=False),
    default="LBFGS",
    show_default=True,
    help="ASE optimizer for the ML relaxations (batched).",
)
@click.option(
    "--fmax",
    type=FiniteFloat(min=0, min_open=True),
    default=0.02,
    show_default=True,
    help="ML relaxation convergence: largest force on a free atom (eV/Å).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=0),
    default=300,
    show_default=True,
    help="Maximum optimizer steps per ML relaxation.",
)
@max_atoms_option
@click.option(
    "--num-random",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Random placements besides the heuristic sites.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for sites and orientations."
)
@click.option(
    "--max-tilt",
    type=FiniteFloat(0, 90),
    default=20.0,
    show_default=True,
    help="Largest tilt of the adsorbate away from the surface normal (degrees).",
)
@click.option(
    "--site-separation",
    type=FiniteFloat(min=0),
    default=0.5,
    show_default=True,
    help="Smallest distance between random sites (Å).",
)
@click.option(
    "--min-distance",
    type=FiniteFloat(min=0),
    default=0.9,
    show_default=True,
    help="Reject orientations with adsorbate-slab distances below this x the sum of covalent radii.",
)
@click.option(
    "--fix-below",
    type=FiniteFloat(),
    default=None,
    metavar="Z",
    help="Fix slab atoms with z below Z (Å) instead of the sub-surface atoms.",
)
@click.option(
    "--surface-depth",
    type=FiniteFloat(min=0, min_open=True),
    default=None,
    metavar="D",
    help="Surface atoms are those within D Å of the top (default: detected by coordination).",
)
@click.option(
    "--min-thickness",
    type=FiniteFloat(min=0, min_open=True),
    default=7.0,
    show_default=True,
    help="--bulk: minimum slab thickness (Å).",
)
@click.option(
    "--vacuum",
    type=FiniteFloat(min=0, min_open=True),
    default=15.0,
    show_default=True,
    help="--bulk: minimum vacuum (Å).",
)
@click.option(
    "--min-size",
    type=FiniteFloat(min=0, min_open=True),
    default=8.0,
    show_default=True,
    help="--bulk: repeat in-plane until a and b are at least this long (Å).",
)
@click.option(
    "--no-slab-relax",
    is_flag=True,
    help="Use the input slab as the clean-slab reference (no ML relaxation).",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Configurations handed to DFT.",
)
@click.option(
    "--dedup-tol",
    type=FiniteFloat(min=0),
    default=0.25,
    show_default=True,
    help="Configurations whose adsorbate atoms match within this (Å, modulo slab symmetry) ...",
)
@click.option(
    "--dedup-energy-tol",
    type=FiniteFloat(min=0),
    default=0.02,
    show_default=True,
    help="... and whose ML energies differ by at most this (eV) are the same minimum.",
)
@click.option(
    "--dft",
    "dft_spec",
    default=None,
    metavar="SPEC",
    help="Reference calculator for the top-k: emt, vasp (ASE environment variables) or module:function.",
)
@click.option(
    "--dft-mode",
    type=click.Choice(["sp", "rx"]),
    default="sp",
    show_default=True,
    help="sp: one single point each; rx: relax from the ML geometry (then filtered again).",
)
@click.option(
    "--dft-fmax",
    type=FiniteFloat(min=0, min_open=True),
    default=0.05,
    show_default=True,
    help="rx: convergence of the reference relaxations (eV/Å).",
)
@click.option(
    "--dft-steps",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="rx: maximum ionic steps per reference relaxation.",
)
@click.option(
    "--gas-refs",
    type=click.Choice(["computed", "oc20"]),
    default="computed",
    show_default=True,
    help="Gas-phase references for total-energy models: computed with the same calculator from "
    "H2/H2O/CO/N2, or OC20's RPBE table (H -3.477, O -7.204, C -7.282, N -8.083 eV).",
)
@click.option(
    "--gas-ref",
    "gas_ref",
    multiple=True,
    metavar="EL=VALUE",
    help="Override one per-element gas reference (eV/atom), e.g. O=-7.204; repeatable.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder (default adsorbml_<slab>_<adsorbate>).",
)
@click.option(
    "--write-vasp",
    is_flag=True,
    help="Also write VASP inputs for the top-k and the clean slab with OC20's settings (RPBE, "
    "ENCUT 350, EDIFFG -0.03, ...; --dft-mode sp: NSW 0 / NELM 300, rx: NSW 2000 / NELM 60; "
    "OC20 k-points) under <out>/vasp/<system>/rank<r>_pid<p>/; POTCAR left to you (see "
    "POTCAR.README there).",
)
@click.option(
    "--discard-migrated",
    is_flag=True,
    help="Drop configurations whose binding atom relaxed to another site type than the one it "
    "was placed on (default: reported and kept).",
)
@progress_option
@campaign_options
def adsorbml_command(*, campaign: CampaignOptions, **kw: object) -> None:
    slabs, adsorbates = kw["slab_file"], kw["adsorbate"]
    if (
        len(slabs) > 1
        or len(adsorbates) > 1
        or any(Path(s).is_dir() for s in slabs)
        or campaign.requested
    ):
        from eqv2calc.cli.campaign import adsorbml_campaign_command

        code = adsorbml_campaign_command(kw, campaign)
        if code:
            raise SystemExit(code)
        return
    kw["slab_file"] = slabs[0] if slabs else None
    kw["adsorbate"] = adsorbates[0] if adsorbates else None
    try:
        code = _run(**kw)
    except KeyboardInterrupt:
        echo_error(
            "interrupted; every finished result is in the database, rerun the same command to resume"
        )
        raise SystemExit(EXIT_INTERRUPTED) from None
    if code:
        raise SystemExit(code)


_ADSORBATE_FILE_SUFFIXES = {
    ".xyz",
    ".extxyz",
    ".traj",
    ".cif",
    ".vasp",
    ".json",
    ".pdb",
    ".sdf",
    ".mol",
}


def _check_usage(o: SimpleNamespace) -> None:
    if o.adsorbate is None:
        raise click.UsageError("--adsorbate is required (or --list-adsorbates)")
    if bool(o.slab_file) == bool(o.bulk_file):
        raise click.UsageError("give exactly one of --slab FILE or --bulk FILE --miller H K L")
    if o.bulk_file and o.miller is None:
        raise click.UsageError("--bulk needs --miller H K L")
    if o.slab_file and o.miller is not None:
        raise click.UsageError("--miller goes with --bulk, not --slab")


def _load_adsorbate(name: str, binding: list[int] | None) -> Any:
    """A library adsorbate by name, or one read from a structure file."""
    from eqv2calc.adsorbml.adsorbates import get_adsorbate, load_adsorbate_file

    if Path(name).is_file():
        return load_adsorbate_file(name, binding)
    if binding is not None:
        raise click.UsageError("--binding-atoms is only for an adsorbate structure file")
    if any(c in name for c in "/\\") or Path(name).suffix.lower() in _ADSORBATE_FILE_SUFFIXES:
        raise FileNotFoundError(f"adsorbate file {name} does not exist")
    return get_adsorbate(name)


def _load_slabs(o: SimpleNamespace) -> list[Any]:
    """The slab read from --slab, or every termination cut from --bulk/--miller."""
    from eqv2calc.adsorbml.slabs import read_slab, slabs_from_bulk

    if o.slab_file:
        return [read_slab(o.slab_file, fix_below=o.fix_below, surface_depth=o.surface_depth)]
    return slabs_from_bulk(
        o.bulk_file,
        tuple(o.miller),
        min_thickness=o.min_thickness,
        vacuum=o.vacuum,
        min_size=o.min_size,
        fix_below=o.fix_below,
        surface_depth=o.surface_depth,
    )


def _config(o: SimpleNamespace, overrides: dict[str, float]) -> Any:
    from eqv2calc.adsorbml.pipeline import AdsorbMLConfig

    return AdsorbMLConfig(
        num_random=o.num_random,
        seed=o.seed,
        max_tilt=o.max_tilt,
        min_distance_scale=o.min_distance,
        site_separation=o.site_separation,
        optimizer=o.optimizer,
        fmax=o.fmax,
        steps=o.steps,
        max_atoms_per_batch=o.max_atoms,
        relax_slab=not o.no_slab_relax,
        dedup_position_tol=o.dedup_tol,
        dedup_energy_tol=o.dedup_energy_tol,
        gas_refs=o.gas_refs,
        gas_ref_overrides=overrides,
        top_k=o.top_k,
        dft_mode=o.dft_mode,
        dft_fmax=o.dft_fmax,
        dft_steps=o.dft_steps,
        progress=o.progress,
        write_vasp=o.write_vasp,
        discard_migrated=o.discard_migrated,
    )


def _run(**options: Any) -> int:
    """One slab (or one bulk cut) and one adsorbate: the options of ``eqv2calc adsorbml``."""
    from eqv2calc.adsorbml.adsorbates import UnknownAdsorbateError
    from eqv2calc.adsorbml.energies import parse_gas_ref
    from eqv2calc.adsorbml.pipeline import run_adsorbml
    from eqv2calc.adsorbml.placement import PlacementError
    from eqv2calc.adsorbml.reference import make_reference_calculator
    from eqv2calc.adsorbml.report import format_table
    from eqv2calc.adsorbml.slabs import SlabInputError
    from eqv2calc.adsorbml.store import ResumeMismatchError

    o = SimpleNamespace(**{"write_vasp": False, "discard_migrated": False, **options})
    if o.list_adsorbates:
        _list_adsorbates()
        return 0
    _check_usage(o)
    binding = _parse_binding_atoms(o.binding_atoms)
    try:
        overrides = dict(parse_gas_ref(t) for t in o.gas_ref)
        ads = _load_adsorbate(o.adsorbate, binding)
        systems = _load_slabs(o)
    except (UnknownAdsorbateError, SlabInputError, FileNotFoundError, ValueError) as err:
        echo_error(str(err))
        return 1

    slab_label = Path(o.slab_file).stem if o.slab_file else systems[0].name.rsplit("_t", 1)[0]
    clean = clean_label(slab_label, "_.-", collapse=True, strip="", fallback="")
    out = Path(o.out_dir) if o.out_dir else _default_out(clean, ads.name)
    check_outputs(folders=[out])
    calc = make_calculator(o.model, device=o.device, dtype=o.dtype)
    dft_calc = dft_label = None
    if o.dft_spec:
        try:
            dft_calc, dft_label = make_reference_calculator(o.dft_spec, directory=out / "dft_run")
        except ValueError as err:
            echo_error(str(err))
            return 1
    cfg = _config(o, overrides)
    click.echo(
        f"AdsorbML: {ads.name} ({ads.formula}) on {len(systems)} slab(s) "
        f"[{', '.join(s.name for s in systems)}] -> {out}",
        err=True,
    )
    for system in systems:  # e.g. a fixed top layer: said now, not only in the final table
        for note in system.notes:
            if note.startswith("warning:"):
                click.echo(f"warning ({system.name}):{note.removeprefix('warning:')}", err=True)
    try:
        with lock_directory(out, "adsorbml"):  # a second run into `out` is refused, by name
            outcomes = run_adsorbml(
                systems, ads, calc, out, cfg, dft_calculator=dft_calc, dft_label=dft_label
            )
    except (ResumeMismatchError, PlacementError, SlabInputError, ValueError, RuntimeError) as err:
        echo_error(str(err))
        return 1
    click.echo(format_table(outcomes, cfg.scf_model))
    click.echo(
        f"results: {out / 'adsorbml.db'}, {out / 'summary.json'}, {out / 'energies.png'}, "
        f"{out / 'topk'}/"
        + (f", {out / 'vasp'}/ (VASP inputs, POTCAR not included)" if o.write_vasp else "")
    )
    return 0

"""Adsorbate names keep their stars and letter case; adsorbate files need binding atoms.

Regression tests for a hostile tester's findings: ``resolve_adsorbate`` used to drop the stars
and fold the case (``*C*O`` -> ``*CO``, ``*CH3OH`` -> ``*OHCH3``, ``Co`` (cobalt) -> ``*CO``),
and a multi-atom adsorbate file without ``--binding-atoms`` silently bound through atom 0.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import fcc100, molecule
from ase.io import write

from eqv2calc.adsorbml.adsorbates import (
    ADSORBATE_SPECS,
    UnknownAdsorbateError,
    get_adsorbate,
    load_adsorbate_file,
    resolve_adsorbate,
)
from eqv2calc.cli import main

# ----------------------------------------------------------------------------------------------
# names
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ADSORBATE_SPECS))
def test_every_library_name_resolves_to_itself(name):
    assert resolve_adsorbate(name) == name


@pytest.mark.parametrize(
    "query,expected",
    [
        ("CO", "*CO"),  # no star at all: the leading one may be dropped
        ("OH", "*OH"),
        ("O", "*O"),
        (" *OH ", "*OH"),
        ("*OCHO", "*OCHO"),
        ("*COOH", "*COOH"),
        ("*OH2", "*OH2"),
        ("H2O", "*OH2"),  # star-less formulae of the same species
        ("HCOO", "*OCHO"),
        ("CH3OH", "*OHCH3"),
        ("water", "*OH2"),  # common names are words, any case
        ("Methanol", "*OHCH3"),
        ("CH2*CO", "CH2*CO"),
        ("*C*C", "*C*C"),
        ("*N*N", "*N*N"),
        ("N2", "*N2"),
    ],
)
def test_accepted_spellings(query, expected):
    assert resolve_adsorbate(query) == expected


@pytest.mark.parametrize(
    "query,suggested",
    [
        # stars elsewhere than in any library entry
        ("*C*O", "'*CO' (binds through C)"),  # bidentate asked for: not the monodentate *CO
        ("*CH3OH", "'*OHCH3' (binds through O)"),  # star on C, the library binds through O
        ("*H2O", "'*OH2' (binds through O)"),
        ("*HCOO", "'*OCHO' (binds through O)"),
        ("C*H2", "'*CH2' (binds through C)"),
        ("*CO*", "'*CO' (binds through C)"),
        ("**CO", "'*CO' (binds through C)"),
        # a star-less name whose library entry has its star(s) elsewhere: no guessed mode
        ("CH2O", "'*CH2*O' (binds through C and O)"),
        ("NN", "'*N*N' (binds through N and N)"),
        # case: element symbols are not molecules
        ("Co", "'*CO' (binds through C)"),
        ("Cn", "'*CN' (binds through C)"),
        ("Nh", "'*NH' (binds through N)"),
        ("No", "'*NO' (binds through N)"),
        ("co", "'*CO' (binds through C)"),
        ("*oh", "'*OH' (binds through O)"),
        ("h2o", "'*OH2' (binds through O)"),
    ],
)
def test_misplaced_stars_and_wrong_case_are_refused_with_suggestions(query, suggested):
    with pytest.raises(UnknownAdsorbateError) as info:
        resolve_adsorbate(query)
    msg = str(info.value)
    assert f"unknown adsorbate {query!r}" in msg
    assert suggested in msg
    assert "case-sensitive" in msg and "--list-adsorbates" in msg
    # get_adsorbate goes through the same lookup
    with pytest.raises(UnknownAdsorbateError):
        get_adsorbate(query)


def test_formate_suggestions_list_both_isomers_with_their_binding_atoms():
    with pytest.raises(UnknownAdsorbateError) as info:
        resolve_adsorbate("*HCOO")
    msg = str(info.value)
    assert "'*OCHO' (binds through O)" in msg and "'*COOH' (binds through C)" in msg
    assert msg.index("'*OCHO'") < msg.index("'*COOH'")  # the same skeleton first


def test_an_element_symbol_is_named_as_such():
    with pytest.raises(UnknownAdsorbateError, match=r"element\(s\) Co; library adsorbates"):
        resolve_adsorbate("Co")
    with pytest.raises(UnknownAdsorbateError, match=r"element\(s\) Fe"):
        resolve_adsorbate("Fe")


@pytest.mark.parametrize("query", ["", "   ", "*", "*C*O*"])
def test_degenerate_names_are_refused(query):
    with pytest.raises(UnknownAdsorbateError, match="unknown adsorbate"):
        resolve_adsorbate(query)


def test_bidentate_request_is_not_served_a_monodentate_entry():
    # the defect: '*C*O' came back as '*CO', one binding atom instead of two
    assert len(get_adsorbate("*C*C").binding_indices) == 2
    assert len(get_adsorbate("*CO").binding_indices) == 1
    with pytest.raises(UnknownAdsorbateError):
        get_adsorbate("*C*O")


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def co_file(tmp_path):
    path = tmp_path / "co.xyz"
    write(path, molecule("CO"))  # ASE's CO is written O first, then C
    assert molecule("CO").get_chemical_symbols() == ["O", "C"]
    return path


def test_multi_atom_file_without_binding_atoms_is_refused(co_file):
    for missing in (None, []):
        with pytest.raises(ValueError) as info:
            load_adsorbate_file(co_file, missing)
        msg = str(info.value)
        assert str(co_file) in msg and "has 2 atoms" in msg
        assert "--binding-atoms" in msg
        assert "Atoms: 0 O, 1 C" in msg


def test_multi_atom_file_binds_through_the_given_atom(co_file):
    ads = load_adsorbate_file(co_file, [1])
    assert ads.symbols == ["C", "O"]
    assert ads.binding_indices == [0]
    assert ads.atoms.positions[1, 2] > 1.0  # O above C


def test_long_atom_lists_are_shortened(tmp_path):
    path = tmp_path / "chain.xyz"
    write(path, Atoms("C60", positions=np.arange(180.0).reshape(60, 3) * 0.5))
    with pytest.raises(ValueError) as info:
        load_adsorbate_file(path, None)
    msg = str(info.value)
    assert "39 C" in msg and "40 C" not in msg and "(20 more)" in msg


def test_single_atom_file_binds_through_its_atom(tmp_path):
    path = tmp_path / "o.xyz"
    write(path, Atoms("O", positions=[[1.0, 2.0, 3.0]]))
    ads = load_adsorbate_file(path, None)
    assert ads.symbols == ["O"] and ads.binding_indices == [0]
    np.testing.assert_allclose(ads.atoms.positions[0], 0.0)


# ----------------------------------------------------------------------------------------------
# command line: exit 1 with the message, no traceback
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def slab_file(tmp_path):
    slab = fcc100("Cu", size=(2, 2, 3), vacuum=7.0)
    slab.info.pop("adsorbate_info", None)
    path = tmp_path / "cu100.vasp"
    write(path, slab, format="vasp")
    return path


def _adsorbml(runner, slab_file, tmp_path, *extra):
    args = ["adsorbml", "--slab", str(slab_file), *extra, "--model", "emt", "--num-random", "0"]
    return runner.invoke(main, [*args, "--out", str(tmp_path / "out"), "--no-progress"])


@pytest.mark.parametrize("name,suggested", [("*C*O", "'*CO'"), ("Co", "'*CO'")])
def test_cli_refuses_a_bad_name(runner, slab_file, tmp_path, name, suggested):
    res = _adsorbml(runner, slab_file, tmp_path, "--adsorbate", name)
    assert res.exit_code == 1, (res.stdout, res.stderr)
    assert f"unknown adsorbate {name!r}" in res.stderr and suggested in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_multi_atom_file_without_binding_atoms(runner, slab_file, tmp_path, co_file):
    res = _adsorbml(runner, slab_file, tmp_path, "--adsorbate", str(co_file))
    assert res.exit_code == 1, (res.stdout, res.stderr)
    assert "--binding-atoms" in res.stderr and "0 O, 1 C" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not (tmp_path / "out").exists()

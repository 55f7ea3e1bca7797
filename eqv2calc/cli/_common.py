"""Options and helpers shared by the CLI commands.

* :func:`model_options` adds ``--model``, ``--device`` and ``--dtype`` to a command.
* :func:`make_calculator` turns them into an ASE calculator. The EquiformerV2 calculator is
  imported only here, when a command runs, so importing a CLI module stays cheap. The special
  model name ``emt`` gives ASE's EMT potential (for testing and for trying the drivers).
* :func:`read_inputs` reads structure files, printing one line per unreadable input.
* :func:`echo_error` prints a one-line error; :func:`fail` prints it and stops the command.
* :class:`FiniteFloat` is the type of every float option: NaN and infinity are refused.
* :func:`check_outputs` checks output folders/files before any work starts, and
  :func:`check_distinct` that no output file is an input file or another output file,
  :func:`check_format` that an output file's name gives a format the command can write.
* :func:`result_reporter`, :func:`exit_on_interrupt` and :func:`require_stress`: what the
  per-structure commands (``eval``, ``relax``, and their campaigns) do alike.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click

__all__ = [
    "EXIT_INTERRUPTED",
    "CommandError",
    "EMT_MODEL_NAME",
    "FiniteFloat",
    "check_distinct",
    "check_format",
    "check_outputs",
    "MODEL_HELP",
    "echo_error",
    "echo_line",
    "exit_on_interrupt",
    "fail",
    "make_calculator",
    "max_atoms_option",
    "model_options",
    "progress_option",
    "read_inputs",
    "require_stress",
    "result_reporter",
    "where",
]

#: Exit status after Ctrl-C (128 + SIGINT), the shell convention.
EXIT_INTERRUPTED = 130


class FiniteFloat(click.FloatRange):
    """A float option that refuses NaN and infinity (``--fmax nan`` would never converge,
    ``--fmax inf`` would converge at once), with optional bounds as :class:`click.FloatRange`."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

    def _describe_range(self) -> str:
        """The range shown in ``--help``: nothing when unbounded (not ``x<=None``)."""
        if self.min is None and self.max is None:
            return ""
        return super()._describe_range()


def check_outputs(
    folders: Sequence[Any] = (), files: Sequence[Any] = (), *, what: str = "output"
) -> None:
    """Fail with a one-line error unless every folder (created if needed) and the folder of
    every file can be written; called before a command starts its work."""
    from eqv2calc.io import OutputNotWritableError, check_writable_dir, check_writable_file

    try:
        for folder in folders:
            if folder is not None:
                check_writable_dir(folder, what=f"{what} folder")
        for file in files:
            if file is not None:
                check_writable_file(file, what=f"{what} file")
    except OutputNotWritableError as err:
        raise CommandError(str(err)) from None


def check_distinct(outputs: Sequence[tuple[str, Any]], inputs: Sequence[Any] = ()) -> None:
    """Stop with exit status 2 if an output file is one of the ``inputs`` (it would be
    overwritten) or two outputs are the same file (one would overwrite the other).

    Args:
        outputs: ``(what, path)`` per output file, ``what`` naming it for the message (e.g.
            ``"--summary"``); a None path is skipped.
        inputs: The input structure files.
    """
    import os

    seen = {os.path.realpath(p): f"the input file {p}" for p in inputs}
    for what, path in outputs:
        if path is None:
            continue
        key = os.path.realpath(path)
        if key in seen:
            fail(
                f"{what} {path} is {seen[key]}: it would be overwritten; choose another file name",
                code=2,
            )
        seen[key] = f"the same file as {what} {path}"


def check_format(path: Any, what: str, writes: Sequence[str] = ()) -> None:
    """Stop with exit status 2, before any work, if ``path`` names a format that will not be
    written: without ``writes``, a name ASE cannot tell a writable format from; with
    ``writes`` (the formats the command writes whatever the name, first the usual one), an
    extension naming another format (``results.cif`` holding extxyz)."""
    if path is None:
        return
    from eqv2calc.io import output_format

    try:
        fmt = output_format(path)
    except ValueError as err:
        if writes:
            return  # no known extension: the name is only a name
        fail(f"{what} {err}", code=2)
    if writes and fmt not in writes:
        fail(
            f"{what} {path}: the extension means {fmt}, but this file is written as "
            f"{writes[0]}; name it *.{writes[0]}",
            code=2,
        )


#: ``--model emt`` means ASE's EMT potential instead of an EquiformerV2 model.
EMT_MODEL_NAME = "emt"

MODEL_HELP = (
    "Checkpoint file or model registry name (see `eqv2calc models`). Default: the small bundled "
    "demonstration model, which imitates ASE's EMT and is not a DFT-accurate model. The name "
    "'emt' uses ASE's EMT potential itself (handy for testing; Al, Cu, Ag, Au, Ni, Pd, Pt, "
    "H, C, N, O only)."
)


def model_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--model``, ``--device`` and ``--dtype`` options to a click command."""
    options = [
        click.option("--model", "-m", "model", default=None, metavar="PATH|NAME", help=MODEL_HELP),
        click.option(
            "--device",
            default="auto",
            show_default=True,
            metavar="DEVICE",
            help="Torch device for the model: auto (CUDA if available), cpu, cuda, cuda:1, ...",
        ),
        click.option(
            "--dtype",
            type=click.Choice(["float32", "float64"]),
            default="float32",
            show_default=True,
            help="Floating-point precision of the model.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


_PRECISION_KEYS = ("precision", "force_precision", "compile")


def _store_precision_option(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep ``--precision``/``--force-precision``/``--compile`` for :func:`make_calculator`."""
    if param.name is not None:
        ctx.meta[f"eqv2calc.{param.name}"] = value
    return value


def precision_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--precision``, ``--force-precision`` and ``--compile`` to a click command.

    They are not passed to the command function: :func:`make_calculator` reads them from the
    click context and applies them to the calculator it builds.
    """
    options = [
        click.option(
            "--precision",
            type=click.Choice(["float32", "float64", "tf32", "bf16"], case_sensitive=False),
            default=None,
            expose_value=False,
            callback=_store_precision_option,
            help="Precision mode of the model (default: --dtype). tf32: TF32 matmuls on CUDA "
            "(on CPU the same as float32); bf16: bfloat16 autocast, refused unless "
            "--force-precision (its error exceeds float32's own, see benchmarks/README.md).",
        ),
        click.option(
            "--force-precision",
            is_flag=True,
            default=False,
            expose_value=False,
            callback=_store_precision_option,
            help="Use a --precision mode even where its measured error is refused.",
        ),
        click.option(
            "--compile",
            "compile",
            is_flag=True,
            default=False,
            expose_value=False,
            callback=_store_precision_option,
            help="Compile the model with torch.compile (opt-in; the first steps are slow).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _precision_request() -> dict[str, Any]:
    """The precision options of the current click command (defaults outside one)."""
    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    return {
        "precision": meta.get("eqv2calc.precision"),
        "force_precision": bool(meta.get("eqv2calc.force_precision")),
        "compile": bool(meta.get("eqv2calc.compile")),
    }


def _model_dtype(dtype: str, precision: str | None) -> str:
    """The dtype the model is loaded in: ``--precision``'s own when given (float64 for
    float64, float32 for the others), ``dtype`` otherwise. A ``--dtype`` given on the command
    line that differs from it is refused (its default is not a choice)."""
    if precision is None:
        return dtype
    from click.core import ParameterSource

    from eqv2calc.engine.precision import PRECISIONS

    mode = PRECISIONS.get(precision.lower())
    if mode is None:
        return dtype  # an unknown name is refused by resolve_precision
    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source("dtype") if ctx is not None else None
    if source not in (None, ParameterSource.DEFAULT) and dtype != mode.dtype:
        raise CommandError(
            f"--precision {mode.name} conflicts with --dtype {dtype}: {mode.name} runs the "
            f"model in {mode.dtype}; drop --dtype or give --dtype {mode.dtype}"
        )
    return mode.dtype


def _apply_precision(calc: Any, dtype: str, request: dict[str, Any]) -> Any:
    """Set the precision mode and compilation asked for on ``calc`` (or refuse, one line)."""
    from eqv2calc.engine.precision import resolve_precision

    name = request["precision"]
    if name is not None:
        try:
            mode = resolve_precision(name, force=request["force_precision"])
        except ValueError as err:
            raise CommandError(str(err)) from None
        if str(calc.dtype).removeprefix("torch.") != mode.dtype:
            raise CommandError(f"--precision {mode.name} conflicts with --dtype {dtype}")
        if mode.name == "tf32" and calc.device.type != "cuda":
            click.echo(
                f"note: --precision tf32 only changes CUDA matmuls; on {calc.device} it runs "
                "as float32",
                err=True,
            )
        calc.precision = mode
    if request["compile"]:
        try:
            calc.compile_model()
        except (RuntimeError, ImportError) as err:
            text = " ".join(str(err).split()) or type(err).__name__
            raise CommandError(f"--compile: {text}; run without --compile") from None
    return calc


def progress_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--progress/--no-progress`` (tqdm bars on stderr)."""
    return click.option(
        "--progress/--no-progress",
        default=True,
        show_default=True,
        help="Show progress bars (on stderr).",
    )(func)


def max_atoms_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--max-atoms`` (memory budget of one batched model call)."""
    from eqv2calc.batching import DEFAULT_MAX_ATOMS_PER_BATCH

    return click.option(
        "--max-atoms",
        "max_atoms",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_ATOMS_PER_BATCH,
        show_default=True,
        help="Most atoms in one batched model call (memory budget); lower it if you run out "
        "of memory, raise it for speed on a large GPU.",
    )(func)


class CommandError(click.ClickException):
    """A click error shown as one ``error: ...`` line, like the per-structure errors."""

    def show(self, file: Any = None) -> None:
        echo_error(self.format_message())


def echo_error(message: str) -> None:
    """Print ``error: <message>`` on one line to stderr."""
    text = " ".join(str(message).split())
    click.echo(f"error: {text}", err=True)


def echo_line(line: str, progress: bool = False) -> None:
    """Print a result line on stdout; with progress bars, without tearing them."""
    if progress:
        import sys

        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stdout)
    else:
        click.echo(line)


def fail(message: str, code: int = 1) -> None:
    """Stop the command with a one-line ``error: ...`` and exit status ``code``."""
    err = CommandError(message)
    err.exit_code = code
    raise err


def make_calculator(model: str | None, device: str = "auto", dtype: str = "float32") -> Any:
    """Build the calculator for ``--model``/``--device``/``--dtype``.

    Args:
        model: Checkpoint path, registry name, ``"emt"`` (ASE's EMT), or None for the
            bundled default model.
        device: Torch device (``auto``, ``cpu``, ``cuda``...).
        dtype: ``float32`` or ``float64``.

    Returns:
        An ASE calculator.

    Raises:
        CommandError: The model cannot be found or loaded (one-line message).
    """
    request = _precision_request()
    dtype = _model_dtype(dtype, request["precision"])  # --precision float64 is --dtype float64
    if model is not None and model.strip().lower() == EMT_MODEL_NAME:
        from ase.calculators.emt import EMT

        if request["precision"] not in (None, "float32", "float64") or request["compile"]:
            raise CommandError(
                "--precision tf32/bf16 and --compile need an EquiformerV2 model, not --model emt"
            )
        return EMT()
    try:
        from eqv2calc.calculator import EquiformerV2Calculator
    except ImportError as err:
        raise CommandError(
            f"the EquiformerV2 calculator is not available ({err}); use --model emt to try the "
            "drivers with ASE's EMT"
        ) from err
    root = click.get_current_context(silent=True)
    deterministic = bool(root and root.find_root().params.get("deterministic"))
    try:
        calc = EquiformerV2Calculator(
            model=model, device=device, dtype=dtype, deterministic=deterministic
        )
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, OSError) as err:
        what = model if model is not None else "the bundled default model"
        text = " ".join(str(err).split()) or type(err).__name__
        raise CommandError(f"cannot load model {what}: {text}") from err
    _apply_precision(calc, dtype, request)
    if model is None:
        label = getattr(calc, "model_label", "the bundled model")
        click.echo(
            f"note: no --model given, using {label}: a small demonstration model that imitates "
            "EMT, not DFT; pass --model for a released checkpoint",
            err=True,
        )
    return calc


def read_inputs(inputs: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """Read structures from files/directories/globs; print one error line per bad input.

    Returns:
        ``(entries, errors)`` as from :func:`eqv2calc.io.load_structures`.
    """
    from eqv2calc.io import load_structures

    entries, errors = load_structures(inputs)
    for err in errors:
        echo_error(str(err))
    return entries, errors


def where(entry: Any) -> str:
    """``file`` or ``file (frame i)`` for messages about one structure."""
    text = str(entry.source)
    if entry.index is not None:
        text += f" (frame {entry.index})"
    return text


def result_reporter(
    as_json: bool, progress: bool, describe: Callable[..., str] | None = None
) -> Callable[..., None]:
    """The ``on_result(entry, result, *extra)`` of a job run from the command line.

    A failure is printed on stderr, named by its input; then, with ``as_json``, the result's
    JSON record (with its source), else for a success ``describe(result, *extra)`` (default:
    the result's summary line).
    """

    def report(entry: Any, result: Any, *extra: Any) -> None:
        if not result.ok:
            echo_error(f"{where(entry)}: {result.error}")
        if as_json:
            echo_line(json.dumps({"source": str(entry.source), **result.to_dict()}), progress)
        elif result.ok:
            line = describe(result, *extra) if describe else result.summary_line()
            echo_line(line, progress)

    return report


@contextlib.contextmanager
def exit_on_interrupt(message: str) -> Iterator[None]:
    """On Ctrl-C inside the block: print ``message`` as one error line and exit with
    :data:`EXIT_INTERRUPTED`."""
    try:
        yield
    except KeyboardInterrupt:
        echo_error(message)
        raise SystemExit(EXIT_INTERRUPTED) from None


def require_stress(calc: Any, what: str) -> None:
    """Stop the command unless ``calc`` gives a stress (needed for ``what``)."""
    from eqv2calc.checks import check_stress_support

    try:
        check_stress_support(calc, what)
    except ValueError as err:
        fail(str(err))

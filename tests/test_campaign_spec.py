"""The calculator spec that campaign workers build from carries --precision and --compile."""

import pytest

from eqv2calc.campaigns import CalculatorSpec


def test_spec_applies_precision_to_the_worker_calculator():
    calc = CalculatorSpec(dtype="float64", precision="float64").build()
    assert calc.precision is not None and calc.precision.name == "float64"
    assert str(calc.dtype) == "torch.float64"
    assert CalculatorSpec().build().precision is None


def test_spec_refuses_what_the_command_line_refuses():
    with pytest.raises(ValueError, match="bf16"):
        CalculatorSpec(precision="bf16").build()  # refused unless forced (measured error)
    forced = CalculatorSpec(precision="bf16", force_precision=True).build()
    assert forced.precision.name == "bf16"
    with pytest.raises(ValueError, match="conflicts with --dtype float32"):
        CalculatorSpec(dtype="float32", precision="float64").build()
    with pytest.raises(ValueError, match="need an EquiformerV2 model"):
        CalculatorSpec(model="emt", precision="bf16", force_precision=True).build()

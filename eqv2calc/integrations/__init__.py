"""Adapters to other simulation frameworks (optional extras, imported lazily).

* :mod:`eqv2calc.integrations.torchsim`: a torch-sim ``ModelInterface``
  (``pip install eqv2calc[torchsim]``).
"""

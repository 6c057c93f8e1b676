"""fedsim's built-in attacks and defences (installed as ``fedsim_plugins``).

Each module is written against :mod:`fedsim.api` only, exactly as a third-party
plugin would be, and registered through entry points in ``pyproject.toml``.
"""

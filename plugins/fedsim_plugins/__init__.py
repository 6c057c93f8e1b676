"""fedsim's built-in attacks and defences (installed as ``fedsim_plugins``).

Each module is written exactly as a third-party plugin would be: against the
contracts of :mod:`fedsim.api` and the documented helper modules
(:mod:`fedsim.inversion`, :mod:`fedsim.privacy`, :mod:`fedsim.analytic`), and
registered through entry points in ``pyproject.toml``.
"""

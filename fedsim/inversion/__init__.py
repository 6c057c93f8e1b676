"""Gradient inversion shared by attack plugins: the gradient-matching engine
(:mod:`~fedsim.inversion.gradient_matching`) and the attacks run on it
(:mod:`~fedsim.inversion.matching`), label recovery (:mod:`~fedsim.inversion.labels`)
and the closed-form attack (:mod:`~fedsim.inversion.analytic_attack`)."""

"""Building blocks of privacy defences: clipping, Gaussian noise and averaging of
updates (:mod:`~fedsim.privacy.noise`) and the privacy accountant
(:mod:`~fedsim.privacy.accounting`)."""

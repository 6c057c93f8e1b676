"""Building blocks shared by defence plugins: clipping, Gaussian noise, averaging, accounting."""

"""NumPy frontends: argument checks, memory layout, and calls into the ``cpu`` launchers, one module per op family."""

"""Micro-benchmarks shipped with fusedadam: ``python -m fusedadam bench SCENARIO``.

Modules, one job each:

:mod:`~fusedadam.benchmarks.timing`     the timing protocol and the machine's description
:mod:`~fusedadam.benchmarks.roofline`   the compiled kernel alone and the bandwidth probe
:mod:`~fusedadam.benchmarks.peers`      the algorithms and the implementations timed
:mod:`~fusedadam.benchmarks.scenarios`  the grids: sweep, model, overhead, roofline
:mod:`~fusedadam.benchmarks.report`     tables, JSON and plots
:mod:`~fusedadam.benchmarks.cli`        the command line
"""

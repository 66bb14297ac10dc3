"""The benchmarks (scripts runnable as `python benchmarks/NAME.py`), installed as fu_fast.benchmarks
so that `fu-fast bench` runs them from an installed wheel too."""

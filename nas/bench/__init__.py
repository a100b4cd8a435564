"""Benchmarks behind `nas bench ...`; results go under results/bench/."""

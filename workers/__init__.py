"""Ray workers: thin actor wrappers around library functions that also run without Ray.

- `workers.profiler`: a latency profiler that owns one device (a whole GPU, or a fixed
  number of CPU threads) on whatever node Ray places it.

The trainer and evaluator actors of the search come with the search issue.
"""

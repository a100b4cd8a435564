"""Ray workers: thin actor wrappers (trainer, evaluators, profilers) around library functions.

None exists yet; they come with the latency and search issues.
"""

"""Search spaces as YAML files, loadable by name.

No space is defined yet: the spaces, `Arch` and the supernet come with the next issue.
"""

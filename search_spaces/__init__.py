"""Search spaces as YAML files, loaded by name (`--space odd-one-out`, `digits-tiny`, ...) or by a
path to a user's file with `nas.space_file.load_space`."""

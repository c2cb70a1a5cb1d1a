"""The composition roots: each builds one role from a config; the only importers of `actors`."""

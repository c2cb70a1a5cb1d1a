"""The composition roots: each builds one kind of process from a config (the daemon, the
server, the log reader behind `runlet logs`, the admin commands); the only importers of
`actors`."""

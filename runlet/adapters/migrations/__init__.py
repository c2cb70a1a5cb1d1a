"""The ledger's SQL migrations (NNNN_name.sql), shipped as package data; see ledger_migrations."""

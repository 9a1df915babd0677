"""The request ledger in SQL: a sink fed from the router's Redis ledger stream (or its in-process ledger), the
table it fills (SQLite by default, PostgreSQL when a DSN is set), and the stats, export and retention over it."""

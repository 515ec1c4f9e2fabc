"""Alembic migrations for the GRM Studio schema, run in code by storage.db.init_db."""

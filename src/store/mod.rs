//! sqlx repositories: one query set for SQLite and PostgreSQL (see `db`).

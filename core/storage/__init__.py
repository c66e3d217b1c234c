"""The database: engine and sessions, the plain-SQL row writer, the tables, and their migrations."""

"""Database migrations (alembic). `HEAD` is the newest revision; a test keeps it in step.

Every schema change gets a revision here (`alembic revision --autogenerate`
against a database at HEAD, reviewed by hand), and `HEAD` is bumped; runs
upgrade the database on start, under a lock, before touching anything.
"""

HEAD = "0012"

"""The migration scripts: the Alembic config, the revision graph (read as text
when it can be, through Alembic when it must), the remembered heads, and
Alembic's runs of env.py. The lock is known here only as the run's hooks carry
it (checked between revisions, its fence taken on env.py's connection); the
failure policy not at all."""

"""The migration scripts: the Alembic config, the revision graph (read as text
when it can be, through Alembic when it must), the remembered heads, and
Alembic's runs of env.py. Nothing here knows about the lock or the policy."""

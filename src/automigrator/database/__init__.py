"""Our own database mechanics: engines and short reads, error translation and
redaction, contention on busy tables, and the purge and its backups."""

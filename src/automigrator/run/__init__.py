"""The parts of one run that :class:`~automigrator.AutoMigrator` composes: the
status reporter, the bounded waits, the upgrade under the lock, and the
attempts under the failure policy."""

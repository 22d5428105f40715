"""The lint of pending revisions: the linter, its operation rules, squawk on
PostgreSQL's SQL, and the live tables' sizes."""

"""What a run needs from the process: shutdown signals, abandonable threads,
the GC freeze, and logging kept intact. Imports nothing of the package."""

"""One function per script: what a script does, importable and testable.

Each `run(...)` takes plain arguments (no flags) and returns what it wrote.
Scripts in scripts/ only parse flags and call these.
"""

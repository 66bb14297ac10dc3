"""The `fu-fast` command line; installed inside the package as fu_fast.cli (see pyproject.toml)."""

"""`python -m fu_fast.cli ...` (for example under torchrun) is `fu-fast ...`."""

from .app import main

main()

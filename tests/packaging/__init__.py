"""Packaging: the wheel carries the package's data and runs from anywhere; install.sh refuses an old Python."""

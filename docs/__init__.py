"""The guides, shipped in the package so ``/scope/docs/`` serves those of the installed version."""

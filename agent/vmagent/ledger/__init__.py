"""The usage ledger's arithmetic (docs/usage.md): integer splitting of
counter deltas and running time across slices, and calendar periods.
Pure functions of their arguments; the collector stores their results."""

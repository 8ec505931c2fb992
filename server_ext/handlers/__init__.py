"""HTTP handlers of the Scope API, one module per area."""

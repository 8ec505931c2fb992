"""anywidget components of Scope Workbench (the workbench widgets arrive with the notebook work)."""

"""anywidget components of Scope Workbench: ``ScopeWidget`` streams a pipeline inline."""

from scope.widgets.scope_widget import ScopeWidget

__all__ = ["ScopeWidget"]

"""The app's widgets: model panes, the turn grid, the history, the message box."""

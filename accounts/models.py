"""Models of this app arrive with the security issue."""

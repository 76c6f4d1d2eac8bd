"""Admin registrations (this app has no models yet)."""

"""Plain reference implementations the tests compare the fast paths with (not shipped)."""

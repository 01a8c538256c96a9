"""The wire contracts of each provider: paths, query parameters and JSON shapes (spec section 1)."""

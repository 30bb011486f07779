"""Thin CLI sub-commands; the work lives in the library modules."""

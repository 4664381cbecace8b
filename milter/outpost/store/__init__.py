"""Stores for cross-message state; see :mod:`outpost.store.base`."""

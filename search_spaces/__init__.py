"""The search spaces autoquant ships (installed as package data: autoquant.search_spaces)."""

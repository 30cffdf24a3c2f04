"""Configuration: the recipe's schema, loading and overrides (recipe), the DeepSpeed JSON (ds_json),
the typed-section builder (typed)."""

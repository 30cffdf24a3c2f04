"""Configuration: the recipe's schema and loading (recipe), `key.sub=value` overrides
(overrides), the DeepSpeed JSON (ds_json)."""

"""Model card templates (Jinja), installed as `hf_masked_vl.model_cards`."""

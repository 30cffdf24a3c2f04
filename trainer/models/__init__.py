"""Models: loading masked LMs (hf_models), BERT configs, attention in chosen layers, the teacher,
the students, the cohort, the pooler, parameter counts, Hub names."""

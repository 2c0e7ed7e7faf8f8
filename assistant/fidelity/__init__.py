"""Student-teacher fidelity by metamorphic testing: relations, tasks, scoring and reports."""

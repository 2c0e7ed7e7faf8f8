"""`assistant fidelity`: the command and the tables and plots it prints."""

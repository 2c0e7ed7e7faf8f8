"""The Typer command line: one module per command group, with the tables and plots each prints; imports the wings, never the reverse."""

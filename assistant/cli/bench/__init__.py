"""`assistant bench`: the command and the tables and plots it prints."""

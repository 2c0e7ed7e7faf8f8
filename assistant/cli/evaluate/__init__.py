"""`assistant eval humaneval`: the command and the tables it prints."""

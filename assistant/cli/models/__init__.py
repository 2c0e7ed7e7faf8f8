"""`assistant models list | verify | path | pull`: the commands and the tables they print."""

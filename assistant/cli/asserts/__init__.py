"""`assistant asserts` and `assistant eval asserts`: the commands and the tables they print."""

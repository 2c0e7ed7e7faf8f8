"""Test-assertion generation for a module (parse, propose, validate, render) and its evaluation dataset."""

"""The ``ftstore`` command line: argument parsing and printing only; every command is one
call into :mod:`ftstore.api` or a subpackage."""

"""One module per group of ``dinseg`` commands: each parses its options (``add_parsers``) and
calls the engine; :mod:`dinseg.apps.cli` puts them together and turns errors into one line."""

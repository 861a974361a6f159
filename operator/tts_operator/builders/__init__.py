"""Pure builders: a parsed spec in, a manifest dict out. No I/O, so unit tests run in milliseconds."""

"""Pure status logic: what exists (children as dicts) in, status fields out. No I/O."""

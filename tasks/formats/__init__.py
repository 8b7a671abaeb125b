"""One module per file format podnet reads or writes, each by that format's own rules."""

"""Reports: a person reads the Markdown, a program reads the versioned JSON."""

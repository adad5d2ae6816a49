echo hello from a static binary

"""The `ovsnat` command (main) and its subcommands: offline compile, bind/unbind, the live
host's dump/diff/status/trace, and the golden files' generator."""

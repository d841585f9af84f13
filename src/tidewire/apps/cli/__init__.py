"""The tidewire command line: one module per subcommand."""

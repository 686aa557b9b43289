"""The ``tvm-sparse-rnn`` command line: one module per subcommand, registered in :mod:`.main`."""

"""``python -m tvm_sparse_rnn`` runs the CLI."""

from .cli.main import main

raise SystemExit(main())

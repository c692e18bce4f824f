"""``python -m extproc.envoy_config [flags]``: print the Envoy configuration (see ``_cli``)."""

from extproc.envoy_config._cli import main

main()

"""The `nas` subcommands: each module adds its parsers and runs them; nas.cli assembles them."""

"""The command layer: ``caloflow SUBCOMMAND``, ``lightning fit`` (LightningCLI) and their options.

Each module here parses arguments and composes the library (:mod:`caloflow` below this package)
with :mod:`refine` and :mod:`callbacks`; nothing below imports from here. A subcommand's module
provides ``add_arguments(parser)`` and ``run(args)``; :mod:`caloflow.commands.cli` dispatches.
"""

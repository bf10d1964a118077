"""The command lines: the original's drop-ins (``inpaint_st``, ``txt2img``), ``demo`` and ``python -m asymvq``.

Each command parses with :class:`asymvq.cli.common.ArgumentParser` and runs through
:func:`asymvq.cli.common.run_command`, so a user mistake is one ``error:`` line and exit code 2.
"""

"""The params.yaml sections of the built-in tasks, one module per task (``SETTINGS``, a
:class:`~flexheads.tasks.base.TaskSettings`): light modules, since validating params.yaml loads them all."""

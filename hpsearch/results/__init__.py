"""Everything read back from a study: ``records`` (what a trial and a study store, and what is derived from
it), ``collect`` → ``figures`` → ``html`` (the report), ``export`` and ``dashboard``.

Nothing here imports torch. This file imports nothing, so the writers' ``from hpsearch.results import
records`` stays light.
"""

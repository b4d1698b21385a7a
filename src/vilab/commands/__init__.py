"""The commands: ``fit``, ``train``, ``eval``, ``draws``, ``demo`` and ``compare``, each a function that
reads a typed config and calls the run lifecycle (:mod:`vilab.train.run`). The CLI calls
these and nothing below them."""

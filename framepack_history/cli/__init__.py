"""``python -m framepack_history VERB ...``: one module per verb, all sharing :mod:`.main`'s parser.

* :mod:`.main` — ``generate``, ``resume``, ``extend``, ``recall``, ``inspect``, the parser and error reporting;
* :mod:`.download` — ``download``; :mod:`.plan` — ``plan``; :mod:`.train` — ``train`` and ``eval``;
  :mod:`.prepare` — ``prepare-data``; :mod:`.finish` — ``loop``, ``join``, ``export``, ``upscale``, ``interpolate``.

The top wing next to the page: it may import everything, nothing imports it.
"""

"""Launch the page: ``python app.py`` (toy-cpu on http://127.0.0.1:7860); see :mod:`framepack_history.app`.

The launcher lives in the package, so an installed copy starts the page too
(``framepack-history-page`` or ``python -m framepack_history.app``); this file keeps
``python app.py`` working in a checkout. Imported as ``app``, it is that module.
"""

import sys

from framepack_history import app as _app

if __name__ == "__main__":
    sys.exit(_app.main())
sys.modules[__name__] = _app  # `import app` gives the launcher itself: its functions, and one set of globals

"""The page, part by part: one builder per part creates its components and wires its events.

* :mod:`.first_screen` — which preset runs, what it needs, the Download button;
* :mod:`.generate` — the form (prompt, inputs, advanced settings, LoRAs) and the job buttons beside it;
* :mod:`.stage` — where the followed job plays (player, preview, progress, plan, files);
* :mod:`.queue`, :mod:`.gallery`, :mod:`.tools`, :mod:`.memory` — the tabs under them;
* :mod:`.endpoints` — the HTTP API's named endpoints.

A builder returns a small record of the components other parts need; :func:`..layout.build_app` composes them.
"""

#: every page event stays off the HTTP API (those are the named endpoints of :mod:`.endpoints`)
PRIVATE = {"api_visibility": "private"}

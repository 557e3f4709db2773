"""The clinic's worklist (``/patients``) and the landing page (``/``): every patient's current
assessments in plain words, filtered, searched, ordered by what needs attention, paged by keyset
and exported as CSV. The worker writes the rows (:func:`store.sync_worklist`) in the same
transaction as the assessments they describe."""

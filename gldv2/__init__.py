"""Google Landmarks v2 as a dataset: fetching it (``download``), checking a copy (``verify``).

Landmark names (read from GLDv2's category CSV) are index data and live in :mod:`index.names`.

Kept apart from ``retrieval/`` (images to decisions) and ``eval/`` (metrics): this package is about the
files a collection arrives as. It depends on ``retrieval`` only for the image checks and the image layout
(``retrieval.data``), so what it reports is what ``build-index`` would meet.
"""

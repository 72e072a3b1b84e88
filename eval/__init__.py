"""Running the recognizer over many labelled or unlabelled queries, and measuring it.

- :mod:`.predict`: ``predict``, a Kaggle recognition submission for a folder of photos;
- :mod:`.evaluate`: ``evaluate`` (GAP of the full pipeline on a labelled holdout, with its evidence) and
  ``tune-threshold`` (re-deciding that evidence), with :mod:`.tuning` (the model-free parameter choice) and
  :mod:`.evidence` (the per-query evidence stream every one of them shares);
- :mod:`.retrieve`: the retrieval task (``evaluate --task retrieval``, ``query --queries``; mAP@100);
- :mod:`.metrics` (GAP and friends), :mod:`.shortlist` (where the true landmark ranks), :mod:`.plots`,
  :mod:`.csv_io` and :mod:`.jsonl` (the files these commands read and write), :mod:`.split` (holdout splits);
- :mod:`.demo`: ``landmarks demo``, the whole pipeline on the bundled photos.
"""

"""Training, evaluation and export of the allxai models (the ``train`` extra)."""

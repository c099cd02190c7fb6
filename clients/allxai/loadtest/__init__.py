"""The load tester (``allxai loadtest``): closed and open loops, sweeps and reports over the thin client's
channel. Options are in ``args``, the scheduler in ``run``, the statistics in ``stats``, the renderers in
``report`` and the command in ``tester``."""

"""Executors: the loops that evaluate sampled policies; the driver owns sampling and storage.

Two executors share everything but the loop:

* :mod:`.ray_tune` — Ray Tune runs trials in worker processes across the cluster's CPUs/GPUs.
  An ``OptunaSearch`` subclass turns sampled params into policies on the driver and records
  each result before ``tell``.
* :mod:`.local` — Optuna's ask/tell loop in this process, no Ray.

Both evaluate a policy with :func:`.results.evaluate_for_trial` (which calls
:func:`autoprune.objective.evaluate_policy`) and record it with
:func:`autoprune.study.finish_trial`; both stop asking once the study holds ``--trials``
finished trials, whoever finished them.
"""

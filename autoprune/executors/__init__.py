"""Executors: the loops that evaluate sampled policies; the driver owns sampling and storage.

Two executors share everything but the loop:

* :mod:`.ray_tune` — Ray Tune runs trials in worker processes across the cluster's CPUs/GPUs.
  An ``OptunaSearch`` subclass turns sampled params into policies on the driver and records
  each result before ``tell``.
* :mod:`.local` — Optuna's ask/tell loop in this process, no Ray.

Both hand out brackets (:mod:`.brackets`: one trial, or ``--screen K`` candidates of which the
adaptive-BN proxy picks one to fine-tune), evaluate them with
:func:`.results.evaluate_bracket_for_trial` (which calls
:func:`autoprune.evaluate.evaluate_bracket`) and record them with
:func:`autoprune.study.finish_bracket`; both stop asking once the study holds ``--trials``
fine-tuned trials, whoever finished them.
"""

"""The constants that split one run's seed into independent random streams, named once.

Every key of a run derives from its seed, so the same command gives the same numbers and a resumed run draws what
an uninterrupted one would (docs/architecture.md). Streams that must not overlap fold a distinct constant into the
seed's key before the step count; the values are arbitrary, only their being distinct and fixed matters (changing
one changes every number a run produces from then on, and breaks the exact resume of runs started before).
"""

K_SCHEDULE_SEED = 0x4B5343
"""Root of SORL's training K schedule: the step counts of update `t` are a function of `t` alone, shared by every
seed of a vmapped batch, so one compiled program serves them all (`agents.sorl.K_schedule_rng`)."""

VALIDATION_STREAM = 0x7A11D
"""Folded into a run's seed for the validation batches (`runner.train.validation_key`): held-out losses are
measured on the same batches at the same step whatever the training stream has drawn."""

ONLINE_ACTION_STREAM = 0x0411E
"""Folded into a run's seed for the online phase's exploration actions (`runner.online.action_key`): the action
before update `t + 1` depends on the seed and `t` only, so a resumed online run acts as an uninterrupted one."""

ONLINE_EPISODE_OFFSET = 2**31
"""Online episodes draw their reset seeds from episode indices above this (`runner.online.online_episode_seed`),
apart from the evaluation episodes' (`runner.evaluation.episode_seed`)."""

"""Autotuning of this package's schedules with MetaSchedule (see ``docs/tuning.md``)."""

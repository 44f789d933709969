"""Training application: typed experiment configs, the trainer, schedules."""

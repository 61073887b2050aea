"""Run bookkeeping: output folders and their lock, checkpoints and resume, redaction of secrets, and the
checks that stop a run that stops making sense. Nothing here trains; the trainer calls it."""

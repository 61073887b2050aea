"""The failures a training run reports as one line (the CLI prints them without a traceback, exit status 1;
2 for `USER_ERRORS`, refusals of what the user asked for before any work: an output_dir that cannot be used)."""
from ..sae.finite import NonFiniteWeightsError
from .checkpoint_files import CheckpointError
from .output_dir import DiskFullError, OutputDirError
from .resume_compat import ResumeMismatchError
from .safety import NonFiniteTrainingError

RUN_ERRORS = (NonFiniteTrainingError, NonFiniteWeightsError, OutputDirError, DiskFullError, CheckpointError,
              ResumeMismatchError)
USER_ERRORS = (OutputDirError,)

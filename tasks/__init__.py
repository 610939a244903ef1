"""effilm's library, by role; every Prefect ``@task`` lives beside the code it runs, and ``flows/`` composes them.

- ``tasks.core``: configuration, data, the model folder and its manifest, training, MLflow tracking, Prefect caching
- ``tasks.compress``: one file per compression technique, and the registry that names them
- ``tasks.measure``: evaluation, benchmarks, runtimes (format -> runner), selection, reports, serving, compare
- ``tasks.longdoc``: long-document attention, long-ification, mechanisms, scaling and summarization
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

"""What every case study stands on: config, data, model folders, training, tracking (MLflow), orchestration (Prefect)."""
